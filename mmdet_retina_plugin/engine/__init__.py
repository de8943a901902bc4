from .cpu_distributed import RetinaCPUDistributedRunner, RetinaDistributedDataParallel  # noqa: F401
from .hooks import *  # noqa: F401,F403
