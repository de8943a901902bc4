"""The whole focal loss in one Triton kernel (CUDA; CPU under ``TRITON_INTERPRET=1``).

One pass reads the logits, the class indices (or one-hot / soft targets) and the weights in
their own dtypes, and writes the gradient, already scaled by ``loss_weight / avg_factor`` and
in the logits' dtype, plus one partial loss sum per program (per segment with ``segments``).
A forward + backward is then three launches: this kernel, the sum of its partials, and
backward's multiplication by the incoming gradient (:func:`scale_grad`). ``avg_factor`` is
read from device memory, never copied to the host.

Imported lazily by ``focal_backends`` (importing it imports ``triton``). The math mirrors
``focal_reference.focal_terms`` term by term, in fp32; the tests compare the two.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .focal_eager import AVG_EPS

_BLOCK = 1024
# Kernel specialisations (compile-time constants; the kernel tests the same literal values).
_GAMMA_ZERO, _GAMMA_TWO, _GAMMA_ANY = 0, 2, 1
_NO_WEIGHT, _ROW_WEIGHT, _ELEM_WEIGHT = 0, 1, 2
_INDEX_TARGET, _DENSE_TARGET = 0, 1
# Segment bounds live on the device: one small tensor per (segments, device), copied there once
# (multi-scale training sees a few dozen image sizes; the oldest are dropped beyond that).
_BOUNDS: 'OrderedDict[Tuple[Tuple[int, ...], torch.device], Tensor]' = OrderedDict()
_MAX_BOUNDS = 64


@triton.jit
def _segment_of(pos, bounds_ptr, NUM_SEG: tl.constexpr):
    """Index of the segment holding each in-image row position ``pos``."""
    seg = tl.zeros_like(pos)
    for s in tl.static_range(1, NUM_SEG):
        seg += (pos >= tl.load(bounds_ptr + s)).to(seg.dtype)
    return seg


@triton.jit
def _focal_kernel(x_ptr, label_ptr, t_ptr, w_ptr, avg_ptr, grad_ptr, out_ptr, bounds_ptr,
                  numel, num_classes, period, factor, alpha, gamma, eps,
                  TARGET: tl.constexpr, W_MODE: tl.constexpr, USE_ALPHA: tl.constexpr,
                  GAMMA_MODE: tl.constexpr, HAS_AVG: tl.constexpr, REDUCE: tl.constexpr,
                  NUM_SEG: tl.constexpr, NEED_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    row = offs // num_classes
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    r = 1.0 / u
    nonneg = x >= 0
    p = tl.where(nonneg, r, e * r)
    p_c = tl.where(nonneg, e * r, r)
    # log1p(e) from log(u), corrected by the rounding error of u = 1 + e (no libdevice needed)
    softplus = tl.maximum(x, 0.0) + tl.log(u) - ((u - 1.0) - e) / u
    if TARGET == 0:  # class indices: the one positive of a row is where the column is its label
        label = tl.load(label_ptr + row, mask=mask, other=-1)
        pos = (offs - row * num_classes) == label
        q = tl.where(pos, p_c, p)
        bce = tl.where(pos, softplus - x, softplus)
        dbce = tl.where(pos, -p_c, p)
        sign = tl.where(pos, -1.0, 1.0)
        a = tl.where(pos, alpha, 1.0 - alpha)
    else:
        t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        q = t * p_c + (1.0 - t) * p
        bce = softplus - x * t
        dbce = (1.0 - t) * p - t * p_c
        sign = 1.0 - 2.0 * t
        a = (1.0 - alpha) + (2.0 * alpha - 1.0) * t
    if not USE_ALPHA:
        a = 1.0
    if GAMMA_MODE == 0:
        loss = a * bce
        grad = a * dbce
    else:
        if GAMMA_MODE == 2:
            mod = q * q
            dmod = 2.0 * q
        else:
            # q == 0 only where dq/dx == 0 too (saturated 0/1 targets): the product's limit is 0
            log2_q = tl.log2(tl.where(q > 0, q, 1.0))
            mod = tl.where(q > 0, tl.exp2(gamma * log2_q), 0.0)
            dmod = tl.where(q > 0, gamma * tl.exp2((gamma - 1.0) * log2_q), 0.0)
        loss = a * mod * bce
        grad = a * (dmod * sign * (p * p_c) * bce + mod * dbce)
    if W_MODE == 1:
        w = tl.load(w_ptr + row, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    elif W_MODE == 2:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    scale = factor
    if HAS_AVG:
        scale = factor / (tl.load(avg_ptr).to(tl.float32) + eps)
    if NEED_GRAD:
        tl.store(grad_ptr + offs, (grad * scale).to(grad_ptr.dtype.element_ty), mask=mask)
    if not REDUCE:
        tl.store(out_ptr + offs, loss * scale, mask=mask)
    else:
        # partial sums per program (and segment), summed by torch after: no atomics
        loss = tl.where(mask, loss, 0.0)
        if NUM_SEG == 1:
            tl.store(out_ptr + pid, tl.sum(loss, axis=0) * scale)
        else:
            seg = _segment_of(row % period, bounds_ptr, NUM_SEG)
            for s in tl.static_range(NUM_SEG):
                part = tl.sum(tl.where(seg == s, loss, 0.0), axis=0) * scale
                tl.store(out_ptr + pid * NUM_SEG + s, part)


@triton.jit
def _scale_segments_kernel(grad_ptr, gout_ptr, gout_stride, bounds_ptr, numel, num_classes,
                           period, NUM_SEG: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    seg = _segment_of((offs // num_classes) % period, bounds_ptr, NUM_SEG)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(gout_ptr + seg * gout_stride, mask=mask, other=0.0).to(tl.float32)
    tl.store(grad_ptr + offs, (g * s).to(grad_ptr.dtype.element_ty), mask=mask)


def _bounds(segments: Sequence[int], device: torch.device) -> Tensor:
    key = (tuple(segments), device)
    if key in _BOUNDS:
        _BOUNDS.move_to_end(key)
    else:
        _BOUNDS[key] = torch.tensor(list(itertools.accumulate(segments, initial=0)),
                                    dtype=torch.int64, device=device)
        if len(_BOUNDS) > _MAX_BOUNDS:
            _BOUNDS.popitem(last=False)
    return _BOUNDS[key]


def triton_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor],
                avg_factor: Optional[Tensor], factor: float, gamma: float,
                alpha: Optional[float], segments: Optional[Sequence[int]], reduce_sum: bool,
                need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Scaled focal loss and its scaled derivative in one kernel launch (+ one sum).

    Args:
        pred (Tensor): logits ``(n, K)``, fp32 / fp16 / bf16, on a CUDA device (any device
            under Triton's interpreter).
        target (Tensor): class indices ``(n,)`` of any integer dtype (outside ``[0, K)``:
            background), or one-hot / soft targets ``(n, K)`` of any dtype.
        weight (Tensor | None): ``(n, 1)`` per-anchor or ``(n, K)`` per-element weights.
        avg_factor (Tensor | None): 0-d or ``(1,)`` normaliser on ``pred``'s device (read by
            the kernel: no host sync); the scale is ``factor / (avg_factor + eps)``.
        factor (float): the scale without ``avg_factor`` (e.g. ``loss_weight``).
        gamma (float): focusing exponent, ``>= 0``.
        alpha (float | None): weight of positives; ``None`` disables the term.
        segments (Sequence[int] | None): with ``reduce_sum``, rows per segment of each image
            (``n = B * sum(segments)``, image-major): the loss per segment instead of a total.
        reduce_sum (bool): sum the loss instead of returning it elementwise.
        need_grad (bool): also return ``d loss / d pred``.

    Returns:
        tuple[Tensor, Tensor | None]: loss (0-d, ``(L,)`` per segment, or ``(n, K)``), fp32,
        and the scaled derivative ``(n, K)`` in ``pred``'s dtype (the gradient of the sum of
        the loss's entries).
    """
    pred = pred.contiguous()
    n, k = pred.shape
    numel = pred.numel()
    programs = triton.cdiv(numel, _BLOCK)
    per_segment = reduce_sum and segments is not None
    num_seg = len(segments) if per_segment else 1
    device = pred.device
    grad = torch.empty_like(pred) if need_grad else None
    out = torch.empty((programs, num_seg) if reduce_sum else (n, k), device=device,
                      dtype=torch.float32)
    index = target.dim() == 1
    if not index and target.dtype == torch.bool:  # Triton loads bytes, not bits
        target = target.to(torch.uint8)
    w_mode = _NO_WEIGHT if weight is None else \
        (_ROW_WEIGHT if weight.shape[1] == 1 else _ELEM_WEIGHT)
    _focal_kernel[(programs,)](
        pred, target if index else pred, pred if index else target.contiguous(),
        pred if weight is None else weight.contiguous(),
        pred if avg_factor is None else avg_factor, pred if grad is None else grad, out,
        _bounds(segments, device) if per_segment else out,
        numel, k, sum(segments) if per_segment else 1, float(factor),
        0.0 if alpha is None else float(alpha), float(gamma), AVG_EPS,
        TARGET=_INDEX_TARGET if index else _DENSE_TARGET, W_MODE=w_mode,
        USE_ALPHA=alpha is not None,
        GAMMA_MODE=_GAMMA_ZERO if gamma == 0 else _GAMMA_TWO if gamma == 2 else _GAMMA_ANY,
        HAS_AVG=avg_factor is not None, REDUCE=reduce_sum, NUM_SEG=num_seg,
        NEED_GRAD=need_grad, BLOCK=_BLOCK)
    if not reduce_sum:
        return out, grad
    return (out.sum(0) if per_segment else out.sum()), grad


def scale_grad(grad: Tensor, grad_out: Tensor, segments: Optional[Sequence[int]]) -> Tensor:
    """``grad`` times the incoming gradient, in place, in one launch (the kernel reads
    ``grad_out`` in its own dtype: no cast of it first).

    Args:
        grad (Tensor): ``(n, K)`` derivative of the loss's entries' sum.
        grad_out (Tensor): incoming gradient of the loss: 0-d, ``(L,)`` per segment, or
            ``(n, K)`` elementwise.
        segments (Sequence[int] | None): the segments of a per-segment loss.

    Returns:
        Tensor: ``grad``.
    """
    if grad_out.dim() == 2:
        return grad.mul_(grad_out)
    num_seg = len(segments) if segments is not None else 1
    _scale_segments_kernel[(triton.cdiv(grad.numel(), _BLOCK),)](
        grad, grad_out, grad_out.stride(0) if grad_out.dim() else 0,
        _bounds(segments, grad.device) if num_seg > 1 else grad,
        grad.numel(), grad.shape[1], sum(segments) if num_seg > 1 else 1, NUM_SEG=num_seg,
        BLOCK=_BLOCK)
    return grad
