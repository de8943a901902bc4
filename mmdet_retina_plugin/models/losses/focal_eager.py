"""The focal loss of ``(n, K)`` rows in eager torch, with its gradient in the same sweep.

What runs on the CPU (over cache-sized chunks, or the whole input fused by ``torch.compile``)
and wherever the Triton kernel does not (``focal_backends`` decides):

* one dense sweep of :func:`~.focal_reference.focal_terms` computes loss and derivative, so
  backward only scales a buffer instead of keeping a dozen ``(n, K)`` autograd intermediates;
* class-index targets never become a one-hot tensor: the sweep treats every element as a
  negative, then the one target entry per row is fixed up by an ``(n, 1)`` gather / scatter.
  Labels outside ``[0, K)`` (mmdet's background ``K``) are background;
* sums accumulate in fp64 (a single fp32 accumulator over millions of elements drifts by
  ~1e-5 relative); per-row sums give the per-segment (per pyramid level) losses.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .focal_reference import compute_dtype, focal_terms

# ``None``: elementwise ``(n, K)``; ``'sum'``: one 0-d sum; ``'rows'``: ``(n,)`` row sums.
Reduce = Optional[str]
Pair = Tuple[Tensor, Optional[Tensor]]
# ``dense(x, t, weight, gamma, alpha, reduce, need_grad) -> (loss, grad)``
DenseFn = Callable[[Tensor, Union[bool, Tensor], Optional[Tensor], float, Optional[float],
                    Reduce, bool], Pair]
# Same epsilon as mmdet's ``weight_reduce_loss``, so ``avg_factor=0`` gives 0, not inf.
AVG_EPS = torch.finfo(torch.float32).eps
# Elements per eager chunk: ~256 KiB per fp32 temporary, so the dozen temporaries of one chunk
# stay in L2 instead of streaming (n, K) intermediates through memory.
_CHUNK_NUMEL = 1 << 16


def dense_pass(x: Tensor, t: Union[bool, Tensor], weight: Optional[Tensor], gamma: float,
               alpha: Optional[float], reduce: Reduce, need_grad: bool) -> Pair:
    """Weighted focal terms of a block of rows, reduced as asked.

    Args:
        x (Tensor): logits ``(n, K)``.
        t (bool | Tensor): ``False`` (all negatives) or float targets ``(n, K)``.
        weight (Tensor | None): ``(n, 1)`` per-anchor or ``(n, K)`` per-element weights.
        gamma (float): focusing exponent, ``>= 0``.
        alpha (float | None): weight of positives; ``None`` disables the term.
        reduce (str | None): see :data:`Reduce`.
        need_grad (bool): also compute the derivative.

    Returns:
        tuple[Tensor, Tensor | None]: loss (0-d or ``(n,)`` fp64 sums, or ``(n, K)``) and the
        weighted derivative ``(n, K)`` or ``None``, in :func:`compute_dtype`.
    """
    loss, grad = focal_terms(x, t, gamma, alpha, need_grad)
    if weight is not None:
        loss = loss * weight
        grad = None if grad is None else grad * weight
    if reduce == 'sum':
        loss = loss.sum(dtype=torch.float64)
    elif reduce == 'rows':
        loss = loss.sum(1, dtype=torch.float64)
    return loss, grad


def dense_chunked(x: Tensor, t: Union[bool, Tensor], weight: Optional[Tensor], gamma: float,
                  alpha: Optional[float], reduce: Reduce, need_grad: bool) -> Pair:
    """:func:`dense_pass` over cache-sized row chunks (same args and returns)."""
    n, k = x.shape
    rows = max(1, _CHUNK_NUMEL // max(k, 1))
    dtype = compute_dtype(x.dtype)
    grad = x.new_empty((n, k), dtype=dtype) if need_grad else None
    if reduce == 'sum':
        loss = x.new_zeros((), dtype=torch.float64)
    else:
        loss = x.new_empty((n,) if reduce == 'rows' else (n, k),
                           dtype=torch.float64 if reduce == 'rows' else dtype)
    for i in range(0, n, rows):
        j = min(i + rows, n)
        lc, gc = dense_pass(x[i:j], t if isinstance(t, bool) else t[i:j],
                            None if weight is None else weight[i:j], gamma, alpha, reduce,
                            need_grad)
        if reduce == 'sum':
            loss += lc
        else:
            loss[i:j] = lc
        if grad is not None:
            grad[i:j] = gc
    return loss, grad


def fix_index_targets(sweep: Pair, pred: Tensor, target: Tensor, weight: Optional[Tensor],
                      gamma: float, alpha: Optional[float], reduce: Reduce) -> Pair:
    """Corrects a sweep that took every element as a negative: the one target entry per row
    of class-index targets gets its positive value (no one-hot tensor, no host sync).

    Background rows rewrite their last column with its (unchanged) negative value.

    Args:
        sweep (tuple[Tensor, Tensor | None]): the sweep's loss and derivative; fixed up in
            place where they are buffers.
        pred (Tensor): logits ``(n, K)``.
        target (Tensor): class indices ``(n,)``.
        weight (Tensor | None): ``(n, 1)`` or ``(n, K)`` weights.
        gamma (float): focusing exponent.
        alpha (float | None): weight of positives; ``None`` disables the term.
        reduce (str | None): the sweep's :data:`Reduce`.

    Returns:
        tuple[Tensor, Tensor | None]: the corrected loss and derivative.
    """
    loss, grad = sweep
    n, k = pred.shape
    valid = ((target >= 0) & (target < k)).unsqueeze(1)
    idx = target.clamp(0, k - 1).unsqueeze(1)
    x_t = pred.gather(1, idx)
    loss_pos, grad_pos = focal_terms(x_t, True, gamma, alpha, grad is not None)
    loss_neg, grad_neg = focal_terms(x_t, False, gamma, alpha, grad is not None)
    w_t = None if weight is None else weight.expand(n, k).gather(1, idx)
    if reduce is None:
        fix = torch.where(valid, loss_pos, loss_neg)
        loss = loss.scatter(1, idx, fix if w_t is None else fix * w_t)
    else:
        fix = torch.where(valid, loss_pos - loss_neg, torch.zeros_like(loss_pos))
        fix = (fix if w_t is None else fix * w_t).to(torch.float64)
        loss = loss + (fix.sum() if reduce == 'sum' else fix.squeeze(1))
    if grad is not None:
        fix = torch.where(valid, grad_pos, grad_neg)
        grad.scatter_(1, idx, fix if w_t is None else fix * w_t)
    return loss, grad


def segment_sums(rows: Tensor, segments: Sequence[int]) -> Tensor:
    """``(L,)`` sums of ``(B * S,)`` row values over the segments of each image's ``S`` rows.

    Args:
        rows (Tensor): ``(B * S,)``, image-major, ``S = sum(segments)``.
        segments (Sequence[int]): rows per segment (e.g. anchors per pyramid level).
    """
    per_image = rows.view(-1, sum(segments))
    return torch.stack([part.sum() for part in per_image.split(list(segments), 1)])


def eager_loss(dense: DenseFn, pred: Tensor, target: Tensor, weight: Optional[Tensor],
               avg_factor: Optional[Tensor], factor: float, gamma: float,
               alpha: Optional[float], segments: Optional[Sequence[int]], reduce_sum: bool,
               need_grad: bool) -> Pair:
    """The whole scaled loss around the sweep ``dense`` (:func:`dense_pass` or
    :func:`dense_chunked`); arguments and returns as ``focal_triton.triton_loss``.

    The scale is ``factor / (avg_factor + eps)``, or ``factor`` without ``avg_factor``.
    Differentiable by autograd too when ``need_grad`` is False (the traced path under
    ``torch.compile`` of a caller).
    """
    dtype = compute_dtype(pred.dtype)
    weight = None if weight is None else weight.to(dtype)
    reduce: Reduce = ('rows' if segments is not None else 'sum') if reduce_sum else None
    sweep = dense(pred, False if target.dim() == 1 else target, weight, gamma, alpha, reduce,
                  need_grad)
    loss, grad = (fix_index_targets(sweep, pred, target, weight, gamma, alpha, reduce)
                  if target.dim() == 1 else sweep)
    if reduce == 'rows':
        loss = segment_sums(loss, segments)
    loss = loss.to(dtype)
    if avg_factor is None:
        scale: Union[float, Tensor] = factor
    else:
        scale = factor / (avg_factor.to(dtype) + AVG_EPS)
    if grad is not None:
        grad.mul_(scale)
    return loss * scale, grad
