"""Where the focal loss runs: the backend choice and the fallback, in one place.

* ``triton``: CUDA tensors (fp32 / fp16 / bf16) run the whole loss as one Triton kernel
  (``focal_triton``). Under Triton's interpreter (``TRITON_INTERPRET=1``, which runs kernels on
  the CPU) CPU tensors take this path too, which is how the kernel is tested without a GPU.
* ``torch.compile``: other inputs with at least ``compile_min_numel`` elements run the eager
  code of ``focal_eager`` as one inductor kernel, compiled once for all batch sizes.
* ``eager``: everything else, and every call after a backend failed once (warned once,
  ``utils/fallback.py``: a failure the eager code shares, an error of the inputs, is raised
  and blames no backend).

Every backend takes the same arguments and returns the same scaled loss and gradient (see
``focal_triton.triton_loss``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from ...utils.compiling import is_compiling
from ...utils.fallback import Out, fast_or_plain
from ...utils.triton_device import on_triton_device
from .focal_eager import Pair, dense_chunked, dense_pass, eager_loss


class FocalBackends:
    """Runs the focal loss on the fastest backend that works for the input."""

    def __init__(self) -> None:
        self._compiled: Optional[Callable[..., Pair]] = None
        self._triton_module = None
        self.failed: Dict[str, bool] = {}

    def choose(self, pred: Tensor, compile_min_numel: Optional[int]) -> str:
        """Backend for ``pred``: ``'triton'``, ``'torch.compile'`` or ``'eager'``.

        Args:
            pred (Tensor): logits ``(N, K)``.
            compile_min_numel (int | None): see :meth:`run`.

        Returns:
            str: the backend's name (before any failure is taken into account).
        """
        if on_triton_device(pred) and pred.dtype != torch.float64 and pred.numel() > 0:
            return 'triton'  # the kernel computes in fp32
        if (compile_min_numel is not None and pred.numel() >= compile_min_numel
                and not is_compiling()):
            return 'torch.compile'
        return 'eager'

    def run(self, pred: Tensor, target: Tensor, weight: Optional[Tensor],
            avg_factor: Optional[Tensor], factor: float, gamma: float, alpha: Optional[float],
            segments: Optional[Sequence[int]], reduce_sum: bool, need_grad: bool,
            compile_min_numel: Optional[int]) -> Pair:
        """The scaled loss and gradient on the chosen backend, eager where that one failed.

        Args:
            pred (Tensor): logits ``(N, K)``.
            target (Tensor): class indices ``(N,)`` or targets ``(N, K)``.
            weight (Tensor | None): ``(N, 1)`` or ``(N, K)`` weights.
            avg_factor (Tensor | None): the normaliser, on the device.
            factor (float): the scale without ``avg_factor``.
            gamma (float): focusing exponent.
            alpha (float | None): weight of positives; ``None`` disables it.
            segments (Sequence[int] | None): per-segment sums (see ``focal_triton``).
            reduce_sum (bool): sum the loss instead of returning it elementwise.
            need_grad (bool): also return the scaled derivative.
            compile_min_numel (int | None): compile inputs from this many elements on;
                ``None`` never compiles.

        Returns:
            tuple[Tensor, Tensor | None]: loss (0-d, ``(L,)`` or ``(N, K)``) and the scaled
            derivative ``(N, K)`` (None if not asked for).
        """
        args = (pred, target, weight, avg_factor, factor, gamma, alpha, segments, reduce_sum,
                need_grad)
        name = self.choose(pred, compile_min_numel)
        if name == 'eager' or self.failed.get(name):
            return eager_loss(dense_chunked, *args)
        if name == 'triton':  # imported inside the fast path: a host may lack Triton
            def fast() -> Pair:
                return self._triton().triton_loss(*args)
        else:
            def fast() -> Pair:
                return self._run_compiled(*args)
        return self._or_eager(name, fast, lambda: eager_loss(dense_chunked, *args))

    def grad(self, grad_out: Tensor, *loss_args: Any,
             compile_min_numel: Optional[int]) -> Tensor:
        """The gradient of :meth:`run`'s loss given its incoming gradient, recomputed (a second
        backward over a retained graph): one fused pass on Triton, else the scaled derivative
        times ``grad_out``.

        Args:
            grad_out (Tensor): incoming gradient: 0-d, ``(L,)`` per segment, or ``(N, K)``.
            *loss_args: :meth:`run`'s arguments ``pred`` (``(N, K)``) to ``reduce_sum``, as
                the forward call passed them.
            compile_min_numel (int | None): see :meth:`run`.

        Returns:
            Tensor: ``(N, K)`` gradient (in the compute dtype; the caller casts).
        """
        segments = loss_args[7]
        if self.choose(loss_args[0], compile_min_numel) == 'triton' \
                and not self.failed.get('triton'):
            return self._or_eager(
                'triton', lambda: self._triton().triton_grad(grad_out, *loss_args),
                lambda: _scale_eager(eager_loss(dense_chunked, *loss_args, True)[1], grad_out,
                                     segments))
        derivative = self.run(*loss_args, True, compile_min_numel)[1]
        return self.scale_grad(derivative, grad_out, segments)

    def scale_grad(self, grad: Tensor, grad_out: Tensor,
                   segments: Optional[Sequence[int]]) -> Tensor:
        """``grad`` times the incoming gradient ``grad_out``, in place (one launch on Triton).

        Args:
            grad (Tensor): ``(N, K)`` derivative of the sum of the loss's entries.
            grad_out (Tensor): 0-d, ``(L,)`` per segment, or ``(N, K)``.
            segments (Sequence[int] | None): the segments of a per-segment loss.

        Returns:
            Tensor: ``grad``.
        """
        if on_triton_device(grad) and not self.failed.get('triton'):
            return self._triton().scale_grad(grad, grad_out, segments)
        return _scale_eager(grad, grad_out, segments)

    def _or_eager(self, name: str, fast: Callable[[], Out], eager: Callable[[], Out]) -> Out:
        """``fast()`` on backend ``name``, :func:`fast_or_plain` with ``eager`` as the plain
        path: a failure turns ``name`` off for later calls, warned once."""
        return fast_or_plain(fast, eager, lambda: self._disable(name),
                             f'RetinaFocalLoss: the {name} backend',
                             'using the eager implementation')

    def _disable(self, name: str) -> None:
        self.failed[name] = True

    def _triton(self):  # noqa: ANN205  (the module; imports triton, absent on some hosts)
        if self._triton_module is None:
            from . import focal_triton
            self._triton_module = focal_triton
        return self._triton_module

    def _run_compiled(self, pred: Tensor, target: Tensor, weight: Optional[Tensor],
                      *rest: object) -> Pair:
        # One kernel for every batch size: only the row count is symbolic.
        for a in (pred, target, weight):
            if a is not None:
                torch._dynamo.mark_dynamic(a, 0)
        if self._compiled is None:
            self._compiled = torch.compile(functools.partial(eager_loss, dense_pass),
                                           fullgraph=True)
        return self._compiled(pred, target, weight, *rest)


def _scale_eager(grad: Tensor, grad_out: Tensor, segments: Optional[Sequence[int]]) -> Tensor:
    """:meth:`FocalBackends.scale_grad` in ATen ops (arguments as there)."""
    if segments and grad_out.dim() == 1:
        period = sum(segments)
        per_row = grad_out.to(grad.dtype).repeat_interleave(
            torch.tensor(list(segments), device=grad.device), output_size=period)
        grad.view(-1, period, grad.size(-1)).mul_(per_row[:, None])
        return grad
    return grad.mul_(grad_out)
