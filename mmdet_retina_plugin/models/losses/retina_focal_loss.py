"""Sigmoid focal loss (`Lin et al., 2017 <https://arxiv.org/abs/1708.02002>`_), a drop-in
replacement for mmdet's ``FocalLoss`` with a closed-form gradient and per-level sums.

The pieces, each in its own file:

* ``focal_reference.py``: the paper's formula and its derivative, elementwise (the oracle);
* ``focal_eager.py``: the loss of ``(N, K)`` rows in eager torch, loss and gradient in one
  sweep, class indices fixed up without a one-hot tensor (CPU; fused by ``torch.compile``);
* ``focal_triton.py``: the same in one Triton kernel (CUDA): forward + backward in 3 launches
  (the loss and gradient pass, the sum of its partials, backward's scaling);
* ``focal_backends.py``: which of them runs;
* this file: the module (mmdet's arguments, shapes and reductions) and the autograd function.

Everything is computed in fp32 (fp64 for fp64 input) from ``exp(-|x|)``, so the loss and
gradient stay finite for any finite logit in fp32 / fp16 / bf16; the gradient is returned in
the input dtype. No host sync on any path for logits: ``avg_factor`` may be a device tensor.
Float targets may have any shape (the logits'); ``activated=True`` takes probabilities instead
of logits (mmdet's ``py_focal_loss_with_prob``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor
from torch.autograd.function import once_differentiable

from ...utils.compiling import is_compiling
from ...utils.errors import RetinaConfigError
from .focal_backends import FocalBackends
from .focal_eager import AVG_EPS, dense_pass, eager_loss, segment_sums
from .focal_reference import compute_dtype, focal_loss_with_prob

_REDUCTIONS = ('none', 'mean', 'sum')
BACKENDS = FocalBackends()


class SigmoidFocalLossFunction(torch.autograd.Function):
    """The scaled focal loss (summed, per segment or elementwise) with a precomputed gradient.

    The derivative is computed in forward, in the same pass as the loss (already scaled), and
    multiplied by the incoming gradient in place in backward. The inputs are saved too, so that
    a second backward over a retained graph can recompute it (the first backward hands its
    buffer to the caller). ``target``, ``weight`` and ``avg_factor`` get no gradient (as in
    mmcv's CUDA op).
    """

    @staticmethod
    def forward(ctx: Any, pred: Tensor, target: Tensor, weight: Optional[Tensor],
                avg_factor: Optional[Tensor], factor: float, gamma: float,
                alpha: Optional[float], segments: Optional[Tuple[int, ...]], reduce_sum: bool,
                compile_min_numel: Optional[int]) -> Tensor:
        args = (factor, gamma, alpha, segments, reduce_sum)
        loss, grad = BACKENDS.run(pred, target, weight, avg_factor, *args, True,
                                  compile_min_numel)
        ctx.save_for_backward(pred, target, weight, avg_factor)
        ctx.grad = grad
        ctx.config = (args, compile_min_numel)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], ...]:
        args, compile_min_numel = ctx.config
        grad = ctx.grad
        ctx.grad = None  # the buffer is handed out below; a repeat backward recomputes it
        pred = ctx.saved_tensors[0]
        if grad is None:
            grad = BACKENDS.grad(grad_out, *ctx.saved_tensors, *args,
                                 compile_min_numel=compile_min_numel)
        else:
            grad = BACKENDS.scale_grad(grad, grad_out, args[3])
        return (grad.to(pred.dtype),) + (None,) * 9


@MODELS.register_module()
class RetinaFocalLoss(BaseModule):
    """Sigmoid focal loss, a drop-in replacement for mmdet's ``FocalLoss``.

    Same constructor and forward arguments, input shapes and numbers (losses and gradients)
    as mmdet's ``FocalLoss``; on logits a closed-form fused gradient, no one-hot tensor, fp32
    math for fp16 / bf16 inputs and fast backends (see the module docstring).

    Args:
        use_sigmoid (bool): must be ``True``: only the sigmoid focal loss is supported.
        gamma (float): focusing exponent ``>= 0``; 0 with ``alpha=None`` is plain BCE.
        alpha (float | None): weight of positives in ``[0, 1]`` (negatives get
            ``1 - alpha``); ``None`` disables the balancing term.
        reduction (str): ``'none'`` | ``'mean'`` | ``'sum'``.
        loss_weight (float): multiplier of the loss, ``>= 0``.
        activated (bool): ``pred`` holds probabilities instead of logits (mmdet's
            ``py_focal_loss_with_prob``: eager autograd, no fast path).
        compile_min_numel (int | None): logits with at least this many elements use a
            ``torch.compile`` kernel (compiled once per process; compile time and speed in
            ``docs/benchmarks.md``); ``None`` disables compiling. Defaults to ``2**22`` (a
            full-size RetinaNet batch is ``~2**25``), so small inputs such as unit tests never
            pay the compile time.
        init_cfg (dict | None): see :class:`mmengine.model.BaseModule`.
    """

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0,
                 alpha: Optional[float] = 0.25, reduction: str = 'mean',
                 loss_weight: float = 1.0, activated: bool = False,
                 compile_min_numel: Optional[int] = 1 << 22,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if use_sigmoid is not True:
            raise RetinaConfigError(f'use_sigmoid must be True (only the sigmoid focal loss is '
                                    f'supported), got {use_sigmoid!r}')
        if not gamma >= 0:
            raise RetinaConfigError(f'gamma must be >= 0, got {gamma!r}')
        if alpha is not None and not 0 <= alpha <= 1:
            raise RetinaConfigError(f'alpha must be in [0, 1] or None, got {alpha!r}')
        _check_reduction('reduction', reduction)
        if not loss_weight >= 0:
            raise RetinaConfigError(f'loss_weight must be >= 0, got {loss_weight!r}')
        if not isinstance(activated, bool):
            raise RetinaConfigError(f'activated must be True or False, got {activated!r}')
        if compile_min_numel is not None and compile_min_numel < 0:
            raise RetinaConfigError(f'compile_min_numel must be >= 0 or None, got '
                                    f'{compile_min_numel!r}')
        self.use_sigmoid = use_sigmoid
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.reduction = reduction
        self.loss_weight = float(loss_weight)
        self.activated = activated
        self.compile_min_numel = compile_min_numel

    def forward(self, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                avg_factor: Optional[Union[float, Tensor]] = None,
                reduction_override: Optional[str] = None,
                segments: Optional[Sequence[int]] = None) -> Tensor:
        """Computes the loss.

        Args:
            pred (Tensor): logits (probabilities with ``activated``) of any shape ``S`` with
                a float target of the same shape, or ``(N, K)`` with class indices, e.g.
                ``(B * sum(Hi*Wi*A), K)``; fp32 / fp64 / fp16 / bf16.
            target (Tensor): float targets of shape ``S`` (one-hot or soft, in ``[0, 1]``) or
                integer class indices ``(N,)`` for ``(N, K)`` ``pred`` (``K``, or any value
                outside ``[0, K)``, is background).
            weight (Tensor | None): loss weights, mmdet's rules: of shape ``S``; for ``(N, K)``
                losses also per anchor (``N`` elements, first dimension ``N``, e.g.
                ``(N,)``) or per element flattened (``N * K`` elements, first dimension not
                ``N``, e.g. ``(N * K,)``).
            avg_factor (float | Tensor | None): with ``'mean'``, the loss is
                ``sum / (avg_factor + eps)`` instead of the mean over all elements; ignored
                with ``'none'``; an error with ``'sum'`` (as in mmdet). A device tensor is
                read on the device (no host sync).
            reduction_override (str | None): replaces ``reduction`` for this call.
            segments (Sequence[int] | None): not in mmdet: with ``'mean'`` / ``'sum'`` and
                ``(N, K)`` ``pred`` whose rows are ``B`` images of ``S = sum(segments)`` rows
                each (image-major, e.g. the anchors of each pyramid level in turn), the loss
                of each segment over all images, from the same single pass; the entries sum
                to the scalar loss. ``RetinaNetHead`` reports its per-level losses with it.

        Returns:
            Tensor: 0-d loss; ``(L,)`` with ``segments``; or the elementwise loss (shape
            ``S``, or ``(N, K)`` for class indices) with ``'none'``; fp32 (fp64 for fp64
            ``pred``).
        """
        reduction = self.reduction
        if reduction_override is not None:
            reduction = _check_reduction('reduction_override', reduction_override)
        if reduction == 'sum' and avg_factor is not None:
            raise RetinaConfigError('avg_factor can not be used with reduction="sum"')
        rows, target = _as_rows(pred, target)
        segments = _check_segments(segments, rows, reduction)
        if weight is not None:
            weight = _weight_as_rows(weight, pred.shape, rows.shape)
        reduce_sum = reduction != 'none'
        factor, avg = self.loss_weight, None
        if reduction == 'mean':
            if avg_factor is None:
                # mmdet's mean over all elements (nan for an empty input, as torch.mean)
                factor = factor / pred.numel() if pred.numel() else float('nan')
            elif isinstance(avg_factor, Tensor):
                avg = avg_factor.to(rows.device)
            else:
                factor = factor / (avg_factor + AVG_EPS)
        if self.activated:
            loss = self._loss_with_prob(rows, target, weight, segments, reduce_sum)
            loss = loss * (factor if avg is None else factor / (avg + AVG_EPS))
        elif is_compiling():
            # traced into the caller's graph: plain differentiable torch, autograd's gradient
            loss = eager_loss(dense_pass, rows, target, weight, avg, factor, self.gamma,
                              self.alpha, segments, reduce_sum, False)[0]
        elif torch.is_grad_enabled() and rows.requires_grad:
            loss = SigmoidFocalLossFunction.apply(rows, target, weight, avg, factor, self.gamma,
                                                  self.alpha, segments, reduce_sum,
                                                  self.compile_min_numel)
        else:
            loss = BACKENDS.run(rows, target, weight, avg, factor, self.gamma, self.alpha,
                                segments, reduce_sum, False, self.compile_min_numel)[0]
        return loss if reduce_sum or target.dim() == 1 else loss.reshape(pred.shape)

    def _loss_with_prob(self, p: Tensor, target: Tensor, weight: Optional[Tensor],
                        segments: Optional[Tuple[int, ...]], reduce_sum: bool) -> Tensor:
        """:func:`focal_loss_with_prob` of ``(n, k)`` rows, weighted, summed (per segment)
        if asked."""
        p = p.to(compute_dtype(p.dtype))
        if target.dim() == 1:  # one-hot by comparison: no host sync
            t = (torch.arange(p.shape[1], device=p.device) == target[:, None]).to(p.dtype)
        else:
            t = target.to(p.dtype)
        loss = focal_loss_with_prob(p, t, self.gamma, self.alpha)
        if weight is not None:
            loss = loss * weight.to(p.dtype)
        if not reduce_sum:
            return loss
        return loss.sum() if segments is None else segment_sums(loss.sum(1), segments)


def _check_segments(segments: Optional[Sequence[int]], rows: Tensor,
                    reduction: str) -> Optional[Tuple[int, ...]]:
    """``segments`` as a tuple of ints >= 0 that split ``rows``' images, or RetinaConfigError."""
    if segments is None:
        return None
    segments = tuple(int(s) for s in segments)
    if reduction == 'none':
        raise RetinaConfigError("segments needs reduction 'mean' or 'sum', got 'none'")
    period = sum(segments)
    if not segments or min(segments) < 0 or period == 0 or rows.shape[0] % period:
        raise RetinaConfigError(
            f'segments must be sizes >= 0 whose sum divides the {rows.shape[0]} '
            f'rows of pred, got {segments}')
    return segments


def _check_reduction(name: str, value: str) -> str:
    if value not in _REDUCTIONS:
        raise RetinaConfigError(f'{name} must be one of {_REDUCTIONS}, got {value!r}')
    return value


def _as_rows(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
    """``pred`` as ``(n, k)`` rows, ``target`` as ``(n,)`` indices or ``(n, k)`` floats.

    Class indices need ``(N, K)`` ``pred`` and stay as they are; a float target of ``pred``'s
    shape ``S`` is elementwise, so any other shape becomes ``(prod(S), 1)``.
    """
    if target.dim() == pred.dim():
        if target.shape != pred.shape:
            raise RetinaConfigError(f'float target must have pred\'s shape {tuple(pred.shape)}, '
                                    f'got {tuple(target.shape)}')
        if pred.dim() == 2:
            return pred, target
        return pred.reshape(-1, 1), target.reshape(-1, 1)
    if pred.dim() != 2:
        raise RetinaConfigError(f'pred must be (N, K) logits for class-index targets, got shape '
                                f'{tuple(pred.shape)}')
    n = pred.shape[0]
    if target.shape != (n,) or target.is_floating_point():
        raise RetinaConfigError(f'class-index target must be an integer (N,) = ({n},) tensor, got '
                                f'{target.dtype} {tuple(target.shape)}')
    return pred, target


def _weight_as_rows(weight: Tensor, shape: torch.Size, rows: torch.Size) -> Tensor:
    """``weight`` as ``(n, 1)`` per-row or ``(n, k)`` per-element weights of the ``rows`` view
    of a loss of ``shape``; mmdet's ``py_sigmoid_focal_loss`` rules: the loss's shape, or for
    ``(N, K)`` losses ``N`` elements with first dimension ``N`` (per anchor) or ``N * K``
    elements with another first dimension (per element, flattened)."""
    if weight.shape == shape:
        return weight.reshape(rows)
    if len(shape) == 2 and weight.dim() > 0:
        n, k = shape
        if weight.shape[0] == n and weight.numel() == n:
            return weight.reshape(n, 1)
        if weight.shape[0] != n and weight.numel() == n * k:
            return weight.reshape(n, k)
    raise RetinaConfigError(f'weight must have the loss\'s shape {tuple(shape)}'
                            + (f', or be (N,) or (N * K,) with N={shape[0]}, K={shape[1]}'
                               if len(shape) == 2 else '')
                            + f'; got {tuple(weight.shape)}')
