"""Triton kernel for the greedy scan of :mod:`.batched_nms` on CUDA (see :func:`greedy_triton`).

One program per (image, class) group walks the group's boxes by descending score, as mmcv's
CPU kernel walks an image: a box still alive is kept and drops every later alive box of its
group whose IoU with it exceeds the threshold. The whole batch is one launch with no host read,
where the pure-tensor rounds of ``batched_nms._greedy_rounds`` launch some twenty small kernels
per round. The IoU is the same fp32 arithmetic in the same order (no fused multiply-add), with
mmcv's CUDA test ``inter > thr * union`` or its CPU test ``inter / union > thr`` (IEEE division).

Imported only for CUDA tensors (or under Triton's CPU interpreter in the tests): it imports
``triton``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# later boxes compared with a kept one at a time
_BLOCK = 128


@triton.jit
def _greedy_group_kernel(boxes_ptr, bounds_ptr, alive_ptr, kept_ptr, max_kept, iou_threshold,
                         offset, CUDA_RULE: tl.constexpr, BLOCK: tl.constexpr):
    group = tl.program_id(0)
    start = tl.load(bounds_ptr + group)
    end = tl.load(bounds_ptr + group + 1)
    # the group's flags set here, not by separate fill kernels: every box is in one group
    for j0 in range(start, end, BLOCK):
        offs = j0 + tl.arange(0, BLOCK)
        inside = offs < end
        tl.store(alive_ptr + offs, tl.full((BLOCK,), 1, tl.int8), mask=inside)
        tl.store(kept_ptr + offs, tl.zeros((BLOCK,), tl.int8), mask=inside)
    tl.debug_barrier()  # the flags are read below by other threads of this program
    num_kept = 0
    for i in range(start, end):
        if num_kept < max_kept:
            if tl.load(alive_ptr + i) != 0:
                x1 = tl.load(boxes_ptr + i * 4)
                y1 = tl.load(boxes_ptr + i * 4 + 1)
                x2 = tl.load(boxes_ptr + i * 4 + 2)
                y2 = tl.load(boxes_ptr + i * 4 + 3)
                area = (x2 - x1 + offset) * (y2 - y1 + offset)
                tl.store(kept_ptr + i, 1)
                num_kept += 1
                for j0 in range(i + 1, end, BLOCK):
                    offs = j0 + tl.arange(0, BLOCK)
                    inside = offs < end
                    bx1 = tl.load(boxes_ptr + offs * 4, mask=inside, other=0.0)
                    by1 = tl.load(boxes_ptr + offs * 4 + 1, mask=inside, other=0.0)
                    bx2 = tl.load(boxes_ptr + offs * 4 + 2, mask=inside, other=0.0)
                    by2 = tl.load(boxes_ptr + offs * 4 + 3, mask=inside, other=0.0)
                    areas = (bx2 - bx1 + offset) * (by2 - by1 + offset)
                    w = tl.maximum(tl.minimum(x2, bx2) - tl.maximum(x1, bx1) + offset, 0.0)
                    h = tl.maximum(tl.minimum(y2, by2) - tl.maximum(y1, by1) + offset, 0.0)
                    inter = w * h
                    union = area + areas - inter
                    if CUDA_RULE:
                        over = inter > iou_threshold * union
                    else:
                        over = tl.div_rn(inter, union) > iou_threshold
                    alive = tl.load(alive_ptr + offs, mask=inside, other=0)
                    tl.store(alive_ptr + offs, tl.where(over, 0, alive), mask=inside)
                # the next box's alive flag was written by other threads of this program
                tl.debug_barrier()


def greedy_triton(boxes: Tensor, segment: Tensor, max_kept: int, iou_threshold: float,
                  offset: int, cuda_rule: bool) -> Tensor:
    """Greedy NMS inside contiguous groups, at most ``max_kept`` kept boxes per group.

    Equal to ``batched_nms._greedy_rounds(boxes, segment, max_kept, ...)``.

    Args:
        boxes (Tensor): ``(D, 4)`` fp32 shifted boxes, sorted by group then descending score
            (CUDA; CPU under the interpreter).
        segment (Tensor): ``(D,)`` long group index of each box, non-decreasing, in ``[0, D)``.
        max_kept (int): a group's scan stops after this many kept boxes.
        iou_threshold (float): a box is dropped when its IoU with a kept one exceeds this.
        offset (int): mmcv's pixel offset (0 or 1).
        cuda_rule (bool): mmcv's CUDA test ``inter > thr * union``; False: its CPU test.

    Returns:
        Tensor: ``(D,)`` bool, True for kept boxes.
    """
    num = boxes.size(0)
    if num == 0 or max_kept <= 0:
        return torch.zeros(num, dtype=torch.bool, device=boxes.device)
    # group g holds boxes bounds[g]:bounds[g + 1] (segment is sorted); groups past the last one
    # are empty
    bounds = torch.searchsorted(segment, torch.arange(num + 1, device=boxes.device))
    alive = torch.empty(num, dtype=torch.int8, device=boxes.device)
    kept = torch.empty(num, dtype=torch.int8, device=boxes.device)
    _greedy_group_kernel[(num,)](boxes.contiguous(), bounds, alive, kept, max_kept,
                                 iou_threshold, offset, CUDA_RULE=cuda_rule, BLOCK=_BLOCK,
                                 enable_fp_fusion=False)
    return kept.view(torch.bool)  # 0 / 1 bytes: a bool view, no cast
