"""Where the focal loss's fused pass runs: the backend choice and the fallback, in one place.

* ``triton``: CUDA tensors (fp32 / fp16 / bf16) run the dense sweep as the Triton kernel of
  ``_triton_focal``. Under Triton's interpreter (``TRITON_INTERPRET=1``, which runs kernels on
  the CPU) CPU tensors take this path too, which is how the kernel is tested without a GPU.
* ``torch.compile``: other inputs with at least ``compile_min_numel`` elements run sweep and
  fix-up as one inductor kernel, compiled once for all batch sizes.
* ``eager``: everything else, and every call after a backend failed once (warned once).

The math itself is the eager code of ``retina_focal_loss``, handed to :class:`FocalBackends`
when it is built, so that this module does not import the loss.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

Pair = Tuple[Tensor, Optional[Tensor]]
# ``dense(pred, target, weight, gamma, alpha, reduce_sum, need_grad) -> (loss, grad)``
DenseFn = Callable[[Tensor, Union[bool, Tensor], Optional[Tensor], float, Optional[float],
                    bool, bool], Pair]
# ``fused(dense, pred, target, weight, gamma, alpha, reduce_sum, need_grad) -> (loss, grad)``
FusedFn = Callable[..., Pair]


def is_compiling() -> bool:
    """Whether dynamo is tracing the caller (the loss then runs eager, traced into the graph).

    ``torch.compiler.is_compiling`` appeared in torch 2.3 and ``torch._dynamo.is_compiling``
    may go; an install without either is taken as not compiling.
    """
    for owner in ('compiler', '_dynamo'):
        fn = getattr(getattr(torch, owner, None), 'is_compiling', None)
        if fn is not None:
            return bool(fn())
    return False


def triton_interpreted() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (read when called, as Triton does)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


class FocalBackends:
    """Runs the fused focal pass on the fastest backend that works for the input.

    Args:
        fused (Callable): ``fused(dense, pred, target, weight, gamma, alpha, reduce_sum,
            need_grad)``: the whole loss around the dense sweep ``dense`` (see
            ``retina_focal_loss.fused_pass``).
        dense_whole (DenseFn): the sweep over the whole input in one expression (what
            ``torch.compile`` fuses).
        dense_chunked (DenseFn): the same sweep over cache-sized chunks (eager).
    """

    def __init__(self, fused: FusedFn, dense_whole: DenseFn, dense_chunked: DenseFn) -> None:
        self.fused = fused
        self.dense_whole = dense_whole
        self.dense_chunked = dense_chunked
        self._compiled: Optional[Callable[..., Pair]] = None
        self.failed: Dict[str, bool] = {}

    def choose(self, pred: Tensor, compile_min_numel: Optional[int]) -> str:
        """Backend for ``pred``: ``'triton'``, ``'torch.compile'`` or ``'eager'``.

        Args:
            pred (Tensor): logits ``(N, K)``.
            compile_min_numel (int | None): see :meth:`run`.

        Returns:
            str: the backend's name (before any failure is taken into account).
        """
        on_triton_device = pred.is_cuda or (pred.device.type == 'cpu' and triton_interpreted())
        if on_triton_device and pred.dtype != torch.float64:  # the kernel computes in fp32
            return 'triton'
        if (compile_min_numel is not None and pred.numel() >= compile_min_numel
                and not is_compiling()):
            return 'torch.compile'
        return 'eager'

    def run(self, pred: Tensor, target: Tensor, weight: Optional[Tensor], gamma: float,
            alpha: Optional[float], reduce_sum: bool, need_grad: bool,
            compile_min_numel: Optional[int]) -> Pair:
        """The fused pass on the chosen backend, eager where that backend failed.

        Args:
            pred (Tensor): logits ``(N, K)``.
            target (Tensor): class indices ``(N,)`` or float targets ``(N, K)``.
            weight (Tensor | None): ``(N, 1)`` or ``(N, K)`` weights in the compute dtype.
            gamma (float): focusing exponent.
            alpha (float | None): weight of positives; ``None`` disables it.
            reduce_sum (bool): sum the loss to a 0-d tensor.
            need_grad (bool): also return ``d loss / d pred``.
            compile_min_numel (int | None): compile inputs from this many elements on;
                ``None`` never compiles.

        Returns:
            tuple[Tensor, Tensor | None]: loss (0-d or ``(N, K)``) and derivative ``(N, K)``.
        """
        args = (pred, target, weight, gamma, alpha, reduce_sum, need_grad)
        name = self.choose(pred, compile_min_numel)
        if name == 'triton' and not self.failed.get(name):
            out = self._try(name, lambda: self.fused(self._triton_dense(), *args))
        elif name == 'torch.compile' and not self.failed.get(name):
            out = self._try(name, lambda: self._run_compiled(*args))
        else:
            out = None
        return out if out is not None else self.fused(self.dense_chunked, *args)

    def _try(self, name: str, fn: Callable[[], Pair]) -> Optional[Pair]:
        # Any exception, including a missing or too old torch / Triton API: a fast path must
        # never break a user's run.
        try:
            return fn()
        except Exception as err:  # noqa: BLE001
            self.failed[name] = True
            warnings.warn(f'RetinaFocalLoss: {name} backend failed ({type(err).__name__}: '
                          f'{err}); using the eager implementation from now on.')
            return None

    @staticmethod
    def _triton_dense() -> DenseFn:
        from ._triton_focal import dense_triton  # imports triton: absent on some hosts
        return dense_triton

    def _run_compiled(self, pred: Tensor, target: Tensor, weight: Optional[Tensor],
                      *rest: object) -> Pair:
        # One kernel for every batch size: only the row count is symbolic.
        for a in (pred, target, weight):
            if a is not None:
                torch._dynamo.mark_dynamic(a, 0)
        if self._compiled is None:
            dense, fused = self.dense_whole, self.fused
            self._compiled = torch.compile(lambda *a: fused(dense, *a), fullgraph=True)
        return self._compiled(pred, target, weight, *rest)
