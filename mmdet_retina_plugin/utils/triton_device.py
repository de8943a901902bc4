"""Where the plugin's Triton kernels run: CUDA tensors, or CPU tensors under Triton's CPU
interpreter (``TRITON_INTERPRET=1``), which is how the kernels are tested without a GPU."""
import os

from torch import Tensor


def triton_interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (read when called, as Triton does)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def on_triton_device(t: Tensor) -> bool:
    """Whether Triton kernels can run on ``t``'s device (CUDA, or the CPU when interpreted)."""
    return t.is_cuda or (t.device.type == 'cpu' and triton_interpreted())
