"""The whole focal loss in one Triton kernel (CUDA; CPU under ``TRITON_INTERPRET=1``).

One pass reads the logits, the class indices (or one-hot / soft targets) and the weights in
their own dtypes and writes, as asked, one partial loss sum per program (per segment with
``segments``) or the elementwise loss, and the gradient in the logits' dtype, scaled by
``loss_weight / avg_factor`` and, in backward, by the incoming gradient. A forward + backward
is three launches: the pass writing the partial sums and the gradient, the sum of the
partials (:func:`triton_loss`), and backward's scaling by the incoming gradient
(:func:`scale_grad`: Triton for a loss per segment, ATen's ``mul_`` otherwise). The kernel is
bound by its arithmetic (exp, log, reciprocals), not by memory, so computing the terms once and
scaling them in a memory-bound pass beats recomputing them in backward; :func:`triton_grad`
recomputes them in one pass where forward's gradient is gone (a second backward over a
retained graph). ``avg_factor`` and the incoming gradient are read from device memory, never
copied to the host.

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

_BLOCK = 1024
# _small_floordiv is exact below this
_SMALL_DIV_LIMIT = 1 << 22
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
def _small_floordiv(a, b):
    """``a // b`` of int32 ``0 <= a < 2**22`` by an int ``b >= 1``, in fp32: exact, since
    ``(a + 0.5) / b`` is at least ``0.5 / b`` away from an integer, more than fp32's rounding
    of the product can move it for such ``a``. A few instructions instead of an integer
    division."""
    return ((a.to(tl.float32) + 0.5) * (1.0 / b.to(tl.float32))).to(tl.int32)


@triton.jit
def _block_rows(numel, num_classes, BLOCK: tl.constexpr):
    """This program's block of ``BLOCK`` flat elements of the ``(n, K)`` rows: its first flat
    index, the in-block offsets and mask, the block's first row, and each element's row
    offset from it and class. The loss kernel is bound by its arithmetic, not by memory, so
    index math counts: the 64-bit part is done once per block, the per-element part in 32
    bits, with no integer division."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    mask = offs < tl.minimum(numel - start, BLOCK).to(tl.int32)
    row0 = start // num_classes
    lin = (start - row0 * num_classes).to(tl.int32) + offs  # < BLOCK + K
    drow = _small_floordiv(lin, num_classes)
    return start, offs, mask, row0, drow, lin - drow * num_classes


@triton.jit
def _block_segments(row0, drow, period, bounds_ptr, NUM_SEG: tl.constexpr,
                    WIDE_PERIOD: tl.constexpr):
    """The segment of each element's row ``row0 + drow`` (rows repeat every ``period``)."""
    if WIDE_PERIOD:
        in_image = (row0 + drow) % period
    else:  # the first row's position in its image, then small exact divisions
        in_image = (row0 % period).to(tl.int32) + drow  # < period + BLOCK
        in_image -= _small_floordiv(in_image, period) * period
    return _segment_of(in_image, bounds_ptr, NUM_SEG)


@triton.jit
def _block_segment(numel, num_classes, period, bounds_ptr, NUM_SEG: tl.constexpr,
                   BLOCK: tl.constexpr):
    """The one segment holding every row of this program's block, or -1 where the block
    crosses a segment (or image) boundary: a block of K = 80 classes spans ~13 rows, a pyramid
    level hundreds or more, so most blocks take the scalar path."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    last = tl.minimum(start + BLOCK, numel) - 1
    first_row, last_row = start // num_classes, last // num_classes
    first_pos = first_row % period
    first = _segment_of(first_pos, bounds_ptr, NUM_SEG)
    same_image = first_pos + (last_row - first_row) < period
    last = _segment_of(last_row % period, bounds_ptr, NUM_SEG)
    return tl.where(same_image & (first == last), first, -1)


@triton.jit
def _segment_grad_out(gout_ptr, gout_stride, block_seg, row0, drow, mask, period, bounds_ptr,
                      NUM_SEG: tl.constexpr, WIDE_PERIOD: tl.constexpr):
    """The incoming gradient of each element's segment, fp32: one load where the whole block
    lies in one segment (``block_seg >= 0``, :func:`_block_segment`)."""
    if block_seg >= 0:
        g = tl.zeros_like(drow).to(tl.float32) + tl.load(
            gout_ptr + block_seg * gout_stride).to(tl.float32)
    else:
        seg = _block_segments(row0, drow, period, bounds_ptr, NUM_SEG, WIDE_PERIOD)
        g = tl.load(gout_ptr + seg * gout_stride, mask=mask, other=0.0).to(tl.float32)
    return g


@triton.jit
def _log1p_unit(e):
    """``log1p(e)`` for ``0 <= e <= 1`` to fp32 accuracy, as ``2 atanh(s)``, ``s = e / (2 + e)
    <= 1/3``: seven terms of its odd series (the first left out is below 2**-25 of the sum),
    fewer instructions than a general logarithm, and no rounding of ``1 + e`` to correct."""
    s = e / (2.0 + e)
    t = s * s
    poly = 1.0 + t * (1.0 / 3 + t * (1.0 / 5 + t * (1.0 / 7 + t * (1.0 / 9 + t * (
        1.0 / 11 + t * (1.0 / 13))))))
    return 2.0 * s * poly


@triton.jit
def _focal_kernel(x_ptr, label_ptr, t_ptr, w_ptr, avg_ptr, gout_ptr, grad_ptr, out_ptr,
                  bounds_ptr, numel, num_classes, period, gout_stride, factor, alpha, gamma,
                  eps, TARGET: tl.constexpr, W_MODE: tl.constexpr, USE_ALPHA: tl.constexpr,
                  GAMMA_MODE: tl.constexpr, HAS_AVG: tl.constexpr, LOSS_MODE: tl.constexpr,
                  NUM_SEG: tl.constexpr, WIDE_PERIOD: tl.constexpr, GRAD_MODE: tl.constexpr,
                  BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start, offs, mask, row0, drow, col = _block_rows(numel, num_classes, BLOCK)
    x = tl.load(x_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    nonneg = x >= 0
    p = tl.where(nonneg, r, e * r)
    p_c = tl.where(nonneg, e * r, r)
    softplus = tl.maximum(x, 0.0) + _log1p_unit(e)
    if TARGET == 0:  # class indices: the one positive of a row is where the column is its label
        label = tl.load(label_ptr + row0 + drow, mask=mask, other=-1)
        pos = col == label
        q = tl.where(pos, p_c, p)
        bce = tl.where(pos, softplus - x, softplus)
        dbce = tl.where(pos, -p_c, p)
        sign = tl.where(pos, -1.0, 1.0)
        a = tl.where(pos, alpha, 1.0 - alpha)
    else:
        t = tl.load(t_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
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
        w = tl.load(w_ptr + row0 + drow, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    elif W_MODE == 2:
        w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    scale = factor
    if HAS_AVG:
        scale = factor / (tl.load(avg_ptr).to(tl.float32) + eps)
    if NUM_SEG > 1:
        block_seg = _block_segment(numel, num_classes, period, bounds_ptr, NUM_SEG, BLOCK)
    if GRAD_MODE != 0:
        grad = grad * scale
        if GRAD_MODE == 2:  # the incoming gradient of a 0-d loss
            grad = grad * tl.load(gout_ptr).to(tl.float32)
        elif GRAD_MODE == 3:  # of a per-segment loss
            grad = grad * _segment_grad_out(gout_ptr, gout_stride, block_seg, row0, drow, mask,
                                            period, bounds_ptr, NUM_SEG, WIDE_PERIOD)
        elif GRAD_MODE == 4:  # of an elementwise loss
            grad = grad * tl.load(gout_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_ptr + start + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)
    if LOSS_MODE == 2:
        tl.store(out_ptr + start + offs, loss * scale, mask=mask)
    elif LOSS_MODE == 1:
        # partial sums per program (and segment), summed by torch after: no atomics
        loss = tl.where(mask, loss, 0.0)
        programs = tl.num_programs(0)
        if NUM_SEG == 1:
            tl.store(out_ptr + pid, tl.sum(loss, axis=0) * scale)
        elif block_seg >= 0:  # one sum, stored in its segment's row
            total = tl.sum(loss, axis=0) * scale
            for s in tl.static_range(NUM_SEG):
                tl.store(out_ptr + s * programs + pid, tl.where(block_seg == s, total, 0.0))
        else:
            seg = _block_segments(row0, drow, period, bounds_ptr, NUM_SEG, WIDE_PERIOD)
            for s in tl.static_range(NUM_SEG):
                part = tl.sum(tl.where(seg == s, loss, 0.0), axis=0) * scale
                tl.store(out_ptr + s * programs + pid, part)


@triton.jit
def _scale_kernel(grad_ptr, gout_ptr, gout_stride, bounds_ptr, numel, num_classes, period,
                  NUM_SEG: tl.constexpr, WIDE_PERIOD: tl.constexpr, BLOCK: tl.constexpr):
    start, offs, mask, row0, drow, _ = _block_rows(numel, num_classes, BLOCK)
    grad = tl.load(grad_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
    block_seg = _block_segment(numel, num_classes, period, bounds_ptr, NUM_SEG, BLOCK)
    grad = grad * _segment_grad_out(gout_ptr, gout_stride, block_seg, row0, drow, mask,
                                    period, bounds_ptr, NUM_SEG, WIDE_PERIOD)
    tl.store(grad_ptr + start + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _programs(numel: int) -> int:
    # ceil(numel / _BLOCK) in plain ints: ``triton.cdiv`` is a constexpr function whose host
    # call costs microseconds, and a call's wall time back to back is the host's
    return -(-numel // _BLOCK)


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


def _segment_args(segments: Optional[Sequence[int]], placeholder: Tensor
                  ) -> Tuple[Tensor, int, int, bool]:
    """The kernels' segment arguments: device bounds (``placeholder`` where there is one
    segment or none), period (rows per image), ``NUM_SEG`` and ``WIDE_PERIOD`` (an image's rows
    too many for :func:`_block_segments`' small divisions)."""
    if segments is None or len(segments) < 2:
        return placeholder, 1, 1, False
    period = sum(segments)
    return (_bounds(segments, placeholder.device), period, len(segments),
            period + _BLOCK >= _SMALL_DIV_LIMIT)


def _launch(pred: Tensor, target: Tensor, weight: Optional[Tensor], avg_factor: Optional[Tensor],
            factor: float, gamma: float, alpha: Optional[float],
            segments: Optional[Sequence[int]], loss_mode: int, grad_mode: int,
            grad_out: Optional[Tensor] = None) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """One launch of :func:`_focal_kernel`: the loss as ``loss_mode`` says (none / per-program
    partial sums / elementwise) and the gradient as ``grad_mode`` says (none / scaled / times
    ``grad_out`` of a 0-d, per-segment or elementwise loss). Returns ``(out, grad)``."""
    pred = pred.contiguous()
    n, k = pred.shape
    if k + _BLOCK >= _SMALL_DIV_LIMIT:
        raise ValueError(f'the Triton focal loss takes fewer than {_SMALL_DIV_LIMIT - _BLOCK} '
                         f'classes, got {k}')
    numel = pred.numel()
    programs = _programs(numel)
    bounds, period, num_seg, wide = _segment_args(segments, pred)
    if grad_mode == _GRAD_TIMES_SEGMENTS and num_seg == 1:
        grad_mode = _GRAD_TIMES_SCALAR  # the one segment's gradient, grad_out[0]
    device = pred.device
    grad = torch.empty_like(pred) if grad_mode != _NO_GRAD else None
    out = None
    if loss_mode == _LOSS_SUMS:
        # (segments, programs): each segment's partials contiguous, summed along rows
        out = torch.empty((num_seg, programs), device=device, dtype=torch.float32)
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
        pred if out is None else out, bounds, numel, k, period,
        grad_out.stride(0) if grad_mode == _GRAD_TIMES_SEGMENTS else 0, float(factor),
        0.0 if alpha is None else float(alpha), float(gamma), AVG_EPS,
        TARGET=_INDEX_TARGET if index else _DENSE_TARGET, W_MODE=w_mode,
        USE_ALPHA=alpha is not None,
        GAMMA_MODE=_GAMMA_ZERO if gamma == 0 else _GAMMA_TWO if gamma == 2 else _GAMMA_ANY,
        HAS_AVG=avg_factor is not None, LOSS_MODE=loss_mode, NUM_SEG=num_seg,
        WIDE_PERIOD=wide, GRAD_MODE=grad_mode, BLOCK=_BLOCK)
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
    return (out.sum(1) if per_segment else out.sum()), grad


def triton_grad(grad_out: Tensor, *loss_args: Any) -> Tensor:
    """The gradient of :func:`triton_loss`'s loss given its incoming gradient, recomputed in one
    launch, where forward's derivative is gone (a second backward over a retained graph): the
    logits read once, the gradient written once.

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


def scale_grad(grad: Tensor, grad_out: Tensor, segments: Optional[Sequence[int]]) -> Tensor:
    """``grad`` times the incoming gradient, in place, in one launch (read on the device in
    its own dtype: no host sync, no cast of it first): :func:`_scale_kernel` for a loss per
    segment, else ATen's ``mul_``, whose launch costs the host less than Triton's Python
    launcher (a call's wall time back to back is the host's).

    Args:
        grad (Tensor): ``(n, K)`` derivative of the sum of the loss's entries.
        grad_out (Tensor): incoming gradient of the loss: 0-d, ``(L,)`` per segment, or
            ``(n, K)`` elementwise.
        segments (Sequence[int] | None): the segments of a per-segment loss.

    Returns:
        Tensor: ``grad``.
    """
    bounds, period, num_seg, wide = _segment_args(segments, grad)
    if grad_out.dim() == 2 or num_seg == 1:  # elementwise, or one value (0-d / (1,))
        return grad.mul_(grad_out)
    _scale_kernel[(_programs(grad.numel()),)](
        grad, grad_out, grad_out.stride(0), bounds, grad.numel(),
        grad.shape[1], period, NUM_SEG=num_seg, WIDE_PERIOD=wide, BLOCK=_BLOCK)
    return grad
