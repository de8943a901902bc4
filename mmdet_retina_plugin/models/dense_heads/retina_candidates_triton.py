"""Steps 2 to 4 of the post-processing (``retina_post_processing.py``) as one Triton kernel.

From each selected (anchor, class) pair it reads the pair's logit, delta and anchor and writes
its score, label, box and validity: mmdet's ``DeltaXYWHBBoxCoder`` decode, the clip to the
image, the rescale to the original image, the ``score_thr`` and ``min_bbox_size`` tests. In
ATen ops that is some forty launches per batch, each a few microseconds of host time, where the
work itself is a few thousand candidates. The arithmetic is the ATen path's, in the same order
and in fp32 without fused multiply-adds (IEEE division, CUDA's ``expf``), so the results are
the ATen path's; ``nan`` propagates through the clamps as through ``torch.clamp``.

Imported only where Triton kernels run (CUDA, or Triton's CPU interpreter in the tests): it
imports ``triton``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

from ...utils.triton_device import triton_interpreted

_BLOCK = 128


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:  # CUDA's expf, as ATen's exp and sigmoid compute it
        y = libdevice.exp(x)
    else:  # the interpreter's (numpy's) exp
        y = tl.exp(x)
    return y


@triton.jit
def _clamp(x, low, high):
    return tl.minimum(tl.maximum(x, low, propagate_nan=tl.PropagateNan.ALL), high,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _candidates_kernel(values_ptr, pairs_ptr, deltas_ptr, anchors_ptr, coder_ptr, hw_ptr,
                       scale_ptr, boxes_ptr, scores_ptr, labels_ptr, valid_ptr, numel, per_image,
                       num_classes, num_base, s_image, s_base, s_delta, s_pixel, max_ratio,
                       ctr_clamp, score_thr, min_size, CTR_CLAMP: tl.constexpr,
                       CLIP: tl.constexpr, RESCALE: tl.constexpr, MIN_SIZE: tl.constexpr,
                       NEG_THR: tl.constexpr, PRECISE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    image = offs // per_image
    logit = tl.load(values_ptr + offs, mask=mask, other=0.0)
    pair = tl.load(pairs_ptr + offs, mask=mask, other=0)
    label = pair % num_classes
    anchor = pair // num_classes
    # deltas (image, base anchor, delta, pixel), in either memory order by the strides
    delta = deltas_ptr + image * s_image + (anchor % num_base) * s_base \
        + (anchor // num_base) * s_pixel
    dx = tl.load(delta, mask=mask, other=0.0) * tl.load(coder_ptr + 4) + tl.load(coder_ptr)
    dy = tl.load(delta + s_delta, mask=mask, other=0.0) * tl.load(coder_ptr + 5) \
        + tl.load(coder_ptr + 1)
    dw = tl.load(delta + 2 * s_delta, mask=mask, other=0.0) * tl.load(coder_ptr + 6) \
        + tl.load(coder_ptr + 2)
    dh = tl.load(delta + 3 * s_delta, mask=mask, other=0.0) * tl.load(coder_ptr + 7) \
        + tl.load(coder_ptr + 3)
    ax1 = tl.load(anchors_ptr + anchor * 4, mask=mask, other=0.0)
    ay1 = tl.load(anchors_ptr + anchor * 4 + 1, mask=mask, other=0.0)
    ax2 = tl.load(anchors_ptr + anchor * 4 + 2, mask=mask, other=0.0)
    ay2 = tl.load(anchors_ptr + anchor * 4 + 3, mask=mask, other=0.0)
    px = (ax1 + ax2) * 0.5
    py = (ay1 + ay2) * 0.5
    pw = ax2 - ax1
    ph = ay2 - ay1
    dxw = pw * dx
    dyh = ph * dy
    if CTR_CLAMP:
        dxw = _clamp(dxw, -ctr_clamp, ctr_clamp)
        dyh = _clamp(dyh, -ctr_clamp, ctr_clamp)
        dw = tl.minimum(dw, max_ratio, propagate_nan=tl.PropagateNan.ALL)
        dh = tl.minimum(dh, max_ratio, propagate_nan=tl.PropagateNan.ALL)
    else:
        dw = _clamp(dw, -max_ratio, max_ratio)
        dh = _clamp(dh, -max_ratio, max_ratio)
    gx = px + dxw
    gy = py + dyh
    gw = pw * _exp(dw, PRECISE)
    gh = ph * _exp(dh, PRECISE)
    x1 = gx - gw * 0.5
    y1 = gy - gh * 0.5
    x2 = gx + gw * 0.5
    y2 = gy + gh * 0.5
    if CLIP:
        h = tl.load(hw_ptr + image * 2, mask=mask, other=0.0)
        w = tl.load(hw_ptr + image * 2 + 1, mask=mask, other=0.0)
        x1 = _clamp(x1, 0.0, w)
        y1 = _clamp(y1, 0.0, h)
        x2 = _clamp(x2, 0.0, w)
        y2 = _clamp(y2, 0.0, h)
    if RESCALE:  # times the reciprocal, as ATen's ``bboxes * (1 / scale)``
        inv_w = tl.div_rn(1.0, tl.load(scale_ptr + image * 2, mask=mask, other=1.0))
        inv_h = tl.div_rn(1.0, tl.load(scale_ptr + image * 2 + 1, mask=mask, other=1.0))
        x1 = x1 * inv_w
        y1 = y1 * inv_h
        x2 = x2 * inv_w
        y2 = y2 * inv_h
    score = tl.div_rn(1.0, 1.0 + _exp(-logit, PRECISE))
    valid = score > score_thr
    if NEG_THR:  # the padding (score 0) is no pair
        valid = valid & (logit > float('-inf'))
    if MIN_SIZE:
        valid = valid & (x2 - x1 > min_size) & (y2 - y1 > min_size)
    tl.store(boxes_ptr + offs * 4, x1, mask=mask)
    tl.store(boxes_ptr + offs * 4 + 1, y1, mask=mask)
    tl.store(boxes_ptr + offs * 4 + 2, x2, mask=mask)
    tl.store(boxes_ptr + offs * 4 + 3, y2, mask=mask)
    tl.store(scores_ptr + offs, score, mask=mask)
    tl.store(labels_ptr + offs, label, mask=mask)
    tl.store(valid_ptr + offs, valid.to(tl.int8), mask=mask)


def decode_candidates_triton(values: Tensor, pairs: Tensor, deltas: Tensor,
                             strides: Tuple[int, int, int, int], anchors: Tensor,
                             coder: Tensor, num_classes: int, num_base: int,
                             ctr_clamp: Optional[float], max_ratio: float,
                             img_hw: Optional[Tensor], scale_factors: Optional[Tensor],
                             score_thr: float, min_size: float
                             ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scores, labels, boxes and validity of the selected pairs, in one launch.

    Args:
        values (Tensor): ``(B, M)`` fp32 logits of the selected pairs (``-inf`` for padding).
        pairs (Tensor): ``(B, M)`` long indices into mmdet's order of a level set's pairs
            (pixel, base anchor, class).
        deltas (Tensor): every level's deltas in one tensor, fp32, read through ``strides``.
        strides (Tuple[int, int, int, int]): ``deltas``' element strides of the image, base
            anchor, delta and pixel axes.
        anchors (Tensor): ``(S, 4)`` fp32 contiguous anchors, ``S = pixels * num_base``.
        coder (Tensor): ``(2, 4)`` fp32 contiguous: the coder's means, then its stds.
        num_classes (int): ``K``.
        num_base (int): base anchors per pixel.
        ctr_clamp (float, optional): mmdet's ``add_ctr_clamp`` bound; None: no such clamp.
        max_ratio (float): the bound on ``dw`` and ``dh``.
        img_hw (Tensor, optional): ``(B, 2)`` fp32 contiguous image ``(h, w)`` to clip to;
            None: no clip.
        scale_factors (Tensor, optional): ``(B, 2)`` fp32 contiguous ``(w_scale, h_scale)``
            to divide by; None: no rescale.
        score_thr (float): scores above it are valid.
        min_size (float): a box's width and height must both exceed it; < 0: no test.

    Returns:
        Tuple[Tensor, Tensor, Tensor, Tensor]: ``bboxes`` ``(B, M, 4)``, ``scores``
        ``(B, M)``, ``labels`` ``(B, M)`` long, ``valid`` ``(B, M)`` bool.
    """
    batch, per_image = values.shape
    device = values.device
    boxes = torch.empty((batch, per_image, 4), dtype=torch.float32, device=device)
    scores = torch.empty((batch, per_image), dtype=torch.float32, device=device)
    labels = torch.empty((batch, per_image), dtype=torch.long, device=device)
    valid = torch.empty((batch, per_image), dtype=torch.int8, device=device)
    numel = values.numel()
    if numel:
        _candidates_kernel[(-(-numel // _BLOCK),)](
            values.contiguous(), pairs.contiguous(), deltas, anchors, coder,
            values if img_hw is None else img_hw,
            values if scale_factors is None else scale_factors,
            boxes, scores, labels, valid, numel, per_image, num_classes, num_base, *strides,
            float(max_ratio), 0.0 if ctr_clamp is None else float(ctr_clamp),
            float(score_thr), float(min_size), CTR_CLAMP=ctr_clamp is not None,
            CLIP=img_hw is not None, RESCALE=scale_factors is not None,
            MIN_SIZE=min_size >= 0, NEG_THR=score_thr < 0, PRECISE=not triton_interpreted(),
            BLOCK=_BLOCK, enable_fp_fusion=False)
    return boxes, scores, labels, valid.view(torch.bool)
