"""The whole focal loss in one Triton kernel (CUDA; CPU under ``TRITON_INTERPRET=1``).

One pass reads the logits, the class indices (or one-hot / soft targets) and the weights in
their own dtypes and writes, as asked, one partial loss sum per program (per segment with
``segments``) or the elementwise loss, and the gradient in the logits' dtype, scaled by
``loss_weight / avg_factor`` and, in backward, by the incoming gradient. A forward + backward
is three launches: the loss pass, the sum of its partials (:func:`triton_loss`), and
backward's gradient pass (:func:`triton_grad`), which recomputes the terms instead of reading
a gradient saved by forward: two passes over ``(n, K)`` memory fewer. ``avg_factor`` and the
incoming gradient are read from device memory, never copied to the host.

Imported lazily by ``focal_backends`` (importing it imports ``triton``). The math mirrors
``focal_reference.focal_terms`` term by term, in fp32; the tests compare the two.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .focal_eager import AVG_EPS

# Elements per program's tile (rows x next power of 2 >= K columns)
_TILE = 2048
# Kernel specialisations (compile-time constants; the kernel tests the same literal values).
_GAMMA_ZERO, _GAMMA_TWO, _GAMMA_ANY = 0, 2, 1
_NO_WEIGHT, _ROW_WEIGHT, _ELEM_WEIGHT = 0, 1, 2
_INDEX_TARGET, _DENSE_TARGET = 0, 1
_NO_LOSS, _LOSS_SUMS, _LOSS_ELEMENTS = 0, 1, 2
_NO_GRAD, _GRAD_SCALED, _GRAD_TIMES_SCALAR, _GRAD_TIMES_SEGMENTS, _GRAD_TIMES_ELEMENTS = range(5)
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
def _focal_kernel(x_ptr, label_ptr, t_ptr, w_ptr, avg_ptr, gout_ptr, grad_ptr, out_ptr,
                  bounds_ptr, num_rows, num_classes, period, gout_stride, factor, alpha, gamma,
                  eps, TARGET: tl.constexpr, W_MODE: tl.constexpr, USE_ALPHA: tl.constexpr,
                  GAMMA_MODE: tl.constexpr, HAS_AVG: tl.constexpr, LOSS_MODE: tl.constexpr,
                  NUM_SEG: tl.constexpr, GRAD_MODE: tl.constexpr, ROWS: tl.constexpr,
                  COLS: tl.constexpr):
    # A tile of ROWS rows x COLS (>= K) columns: an element's row and class come from the tile's
    # shape, not from a division of its flat index (64-bit division made the kernel
    # compute-bound); per-row loads (labels, row weights, segments) are one per row.
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    row_ok = rows < num_rows
    mask = row_ok[:, None] & (cols < num_classes)[None, :]
    offs = rows.to(tl.int64)[:, None] * num_classes + cols[None, :]
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
        label = tl.load(label_ptr + rows, mask=row_ok, other=-1)
        pos = cols[None, :] == label[:, None]
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
        w = tl.load(w_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        loss = loss * w
        grad = grad * w
    elif W_MODE == 2:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    scale = factor
    if HAS_AVG:
        scale = factor / (tl.load(avg_ptr).to(tl.float32) + eps)
    if NUM_SEG > 1:
        seg = _segment_of(rows % period, bounds_ptr, NUM_SEG)  # (ROWS,)
    if GRAD_MODE != 0:
        grad = grad * scale
        if GRAD_MODE == 2:  # the incoming gradient of a 0-d loss
            grad = grad * tl.load(gout_ptr).to(tl.float32)
        elif GRAD_MODE == 3:  # of a per-segment loss
            grad = grad * tl.load(gout_ptr + seg * gout_stride, mask=row_ok,
                                  other=0.0).to(tl.float32)[:, None]
        elif GRAD_MODE == 4:  # of an elementwise loss
            grad = grad * tl.load(gout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if LOSS_MODE == 2:
        tl.store(out_ptr + offs, loss * scale, mask=mask)
    elif LOSS_MODE == 1:
        # partial sums per program (and segment), summed by torch after: no atomics
        row_loss = tl.sum(tl.where(mask, loss, 0.0), axis=1)
        if NUM_SEG == 1:
            tl.store(out_ptr + pid, tl.sum(row_loss, axis=0) * scale)
        else:
            for s in tl.static_range(NUM_SEG):
                part = tl.sum(tl.where(seg == s, row_loss, 0.0), axis=0) * scale
                tl.store(out_ptr + pid * NUM_SEG + s, part)


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


def _launch(pred: Tensor, target: Tensor, weight: Optional[Tensor], avg_factor: Optional[Tensor],
            factor: float, gamma: float, alpha: Optional[float],
            segments: Optional[Sequence[int]], loss_mode: int, grad_mode: int,
            grad_out: Optional[Tensor] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """One launch of :func:`_focal_kernel`: the loss as ``loss_mode`` says (none / per-program
    partial sums / elementwise) and the gradient as ``grad_mode`` says (none / scaled / times
    ``grad_out`` of a 0-d, per-segment or elementwise loss). Returns ``(out, grad)``."""
    pred = pred.contiguous()
    n, k = pred.shape
    cols = triton.next_power_of_2(k)
    rows = max(1, _TILE // cols)
    programs = triton.cdiv(n, rows)
    num_seg = len(segments) if segments is not None else 1
    if grad_mode == _GRAD_TIMES_SEGMENTS and num_seg == 1:
        grad_mode = _GRAD_TIMES_SCALAR  # the one segment's gradient, grad_out[0]
    device = pred.device
    grad = torch.empty_like(pred) if grad_mode != _NO_GRAD else None
    out = None
    if loss_mode == _LOSS_SUMS:
        out = torch.empty((programs, num_seg), device=device, dtype=torch.float32)
    elif loss_mode == _LOSS_ELEMENTS:
        out = torch.empty((n, k), device=device, dtype=torch.float32)
    index = target.dim() == 1
    if not index and target.dtype == torch.bool:  # Triton loads bytes, not bits
        target = target.to(torch.uint8)
    w_mode = _NO_WEIGHT if weight is None else \
        (_ROW_WEIGHT if weight.shape[1] == 1 else _ELEM_WEIGHT)
    _focal_kernel[(programs,)](
        pred, target if index else pred, pred if index else target.contiguous(),
        pred if weight is None else weight.contiguous(),
        pred if avg_factor is None else avg_factor,
        pred if grad_out is None else grad_out, pred if grad is None else grad,
        pred if out is None else out, _bounds(segments, device) if num_seg > 1 else pred,
        n, k, sum(segments) if num_seg > 1 else 1,
        grad_out.stride(0) if grad_mode == _GRAD_TIMES_SEGMENTS else 0, float(factor),
        0.0 if alpha is None else float(alpha), float(gamma), AVG_EPS,
        TARGET=_INDEX_TARGET if index else _DENSE_TARGET, W_MODE=w_mode,
        USE_ALPHA=alpha is not None,
        GAMMA_MODE=_GAMMA_ZERO if gamma == 0 else _GAMMA_TWO if gamma == 2 else _GAMMA_ANY,
        HAS_AVG=avg_factor is not None, LOSS_MODE=loss_mode, NUM_SEG=num_seg,
        GRAD_MODE=grad_mode, ROWS=rows, COLS=cols)
    return out, grad


def triton_loss(pred: Tensor, target: Tensor, weight: Optional[Tensor],
                avg_factor: Optional[Tensor], factor: float, gamma: float,
                alpha: Optional[float], segments: Optional[Sequence[int]], reduce_sum: bool,
                need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """Scaled focal loss (and its scaled derivative) in one kernel launch (+ one sum).

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
    per_segment = reduce_sum and segments is not None
    out, grad = _launch(pred, target, weight, avg_factor, factor, gamma, alpha,
                        segments if per_segment else None,
                        _LOSS_SUMS if reduce_sum else _LOSS_ELEMENTS,
                        _GRAD_SCALED if need_grad else _NO_GRAD)
    if not reduce_sum:
        return out, grad
    return (out.sum(0) if per_segment else out.sum()), grad


def triton_grad(grad_out: Tensor, *loss_args: Any) -> Tensor:
    """The gradient of :func:`triton_loss`'s loss given its incoming gradient, recomputed in one
    launch: backward reads the logits once and writes the gradient once, and forward writes
    no ``(n, K)`` buffer at all (two passes over memory fewer than keeping forward's
    derivative and scaling it).

    Args:
        grad_out (Tensor): incoming gradient of the loss, on ``pred``'s device: 0-d, ``(L,)``
            per segment, or ``(n, K)`` elementwise (read by the kernel: no host sync).
        *loss_args: :func:`triton_loss`'s arguments ``pred`` (``(n, K)``) to ``reduce_sum``,
            as the forward call passed them.

    Returns:
        Tensor: ``(n, K)`` gradient in ``pred``'s dtype.
    """
    pred, target, weight, avg_factor, factor, gamma, alpha, segments, reduce_sum = loss_args
    if not reduce_sum:
        if grad_out.stride() == (0, 0):  # expanded from a scalar (e.g. ``loss.sum()``)
            mode, grad_out = _GRAD_TIMES_SCALAR, grad_out.as_strided((), ())
        else:
            mode, grad_out = _GRAD_TIMES_ELEMENTS, grad_out.contiguous()
        segments = None
    elif segments is not None:
        mode = _GRAD_TIMES_SEGMENTS
    else:
        mode = _GRAD_TIMES_SCALAR
    return _launch(pred, target, weight, avg_factor, factor, gamma, alpha, segments, _NO_LOSS,
                   mode, grad_out)[1]
