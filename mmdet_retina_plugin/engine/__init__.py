from .cpu_distributed import RetinaDistributedDataParallel, install_cpu_distributed  # noqa: F401
from .hooks import *  # noqa: F401,F403

# CPU-only hosts: mmengine's pytorch launcher falls back to gloo (no-op where CUDA exists).
install_cpu_distributed()
