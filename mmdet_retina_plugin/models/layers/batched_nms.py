"""Class-wise NMS of a whole batch in one call, equal to mmcv's ``batched_nms`` per image.

mmdet post-processes image by image: ``batched_nms`` shifts each class's boxes by
``label * (max coordinate of the image + 1)`` so that classes never overlap, then mmcv's greedy
CPU/CUDA kernel compares every pair of the image's boxes (classes included, whose IoU is 0).
Here all images go through one call:

* boxes are shifted exactly as mmcv shifts them, per image, so every coordinate and IoU below is
  bitwise the one mmcv's kernel computes (same fp32 operations in the same order); images are
  kept apart by grouping, not by another shift, which would change the rounding;
* IoUs are computed only between boxes of the same (image, class) group, earlier (higher score)
  against later, which is ``sum(n_g^2) / 2`` pairs instead of ``n^2 / 2`` per image;
* greedy suppression (a box survives iff no surviving earlier box of its group overlaps it by
  more than the threshold) is resolved for all groups at once by a fixed-point iteration over the
  suppression edges: in each round every undecided box whose earlier neighbours are all decided
  is decided, so the rounds number the longest chain of overlaps, not the boxes;
* a group larger than ``_KERNEL_MIN_GROUP`` goes alone through mmcv's compiled ``nms`` kernel
  instead (same shifted boxes, so the same IoUs): its greedy loop skips suppressed boxes and
  costs ``n * kept`` instead of all ``n^2 / 2`` pairs, which outweighs one call per group only
  for large groups (e.g. the thousands of candidates of one class of a detector with few
  classes, or with random weights).

Boxes with equal scores are ordered by their index (a stable sort); mmcv's kernel sorts scores
with an unspecified order for ties, so only exactly tied scores can differ.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from mmcv.utils import ext_loader
from torch import Tensor

_ext = ext_loader.load_ext('_ext', ['nms'])

# nms_cfg keys this implementation honours; any other key (or another ``type``) makes the
# caller fall back to mmcv's ``batched_nms`` image by image.
SUPPORTED_KEYS = frozenset({'type', 'iou_threshold', 'class_agnostic', 'split_thr', 'offset'})
# Pairs of boxes whose IoU is computed at once: bounds memory (~40 bytes per pair) when one
# class holds thousands of candidates.
_PAIR_CHUNK = 1 << 21
# Groups with more boxes than this use mmcv's kernel (about where one kernel call, ~0.1 ms,
# costs what the all-pairs IoUs of the group cost on a CPU core).
_KERNEL_MIN_GROUP = 128


def supports(nms_cfg: Dict) -> bool:
    """Whether :func:`batched_nms_batch` implements ``nms_cfg`` (mmcv's plain ``'nms'``)."""
    return nms_cfg.get('type', 'nms') == 'nms' and set(nms_cfg) <= SUPPORTED_KEYS \
        and nms_cfg.get('offset', 0) in (0, 1)


def _shifted_boxes(boxes: Tensor, labels: Tensor, img_ids: Tensor,
                   num_imgs: int) -> Tensor:
    """mmcv ``batched_nms``'s class offsets, computed per image as mmdet's per-image call does.

    Args:
        boxes (Tensor): ``(N, 4)`` x1y1x2y2.
        labels (Tensor): ``(N,)`` class ids.
        img_ids (Tensor): ``(N,)`` image of each box.
        num_imgs (int): batch size.

    Returns:
        ``(N, 4)``: ``boxes + label * (max coordinate of the box's image + 1)``.
    """
    img_max = boxes.new_full((num_imgs,), -torch.inf).scatter_reduce(
        0, img_ids, boxes.amax(dim=1), 'amax')
    # mmcv: offsets = idxs.to(boxes) * (max_coordinate + 1); boxes + offsets[:, None]
    offsets = labels.to(boxes) * (img_max + 1)[img_ids]
    return boxes + offsets[:, None]


def _group_pairs(group_end: Tensor, start: int, end: int) -> Tuple[Tensor, Tensor]:
    """All ``(earlier, later)`` pairs inside groups, for earlier boxes ``start..end-1``.

    Args:
        group_end (Tensor): ``(N,)`` for each sorted box, one past the last box of its group.
        start (int): first earlier box.
        end (int): one past the last earlier box.

    Returns:
        ``src`` and ``dst`` ``(P,)``: sorted-box indices with ``src < dst`` in one group.
    """
    idx = torch.arange(start, end, device=group_end.device)
    later = group_end[start:end] - idx - 1
    src = torch.repeat_interleave(idx, later)
    first = later.cumsum(0) - later  # where each src's run of pairs begins
    dst = src + 1 + torch.arange(src.numel(), device=src.device) \
        - torch.repeat_interleave(first, later)
    return src, dst


def _suppression_edges(boxes: Tensor, counts: Tensor, iou_threshold: float,
                       offset: int) -> Tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i`` before ``j`` in one group, whose IoU exceeds the threshold.

    The IoU is mmcv's ``nms_cpu``: ``w = max(0, min(x2) - max(x1) + offset)``, likewise ``h``,
    ``inter = w * h``, ``inter / (area_i + area_j - inter)`` with
    ``area = (x2 - x1 + offset) * (y2 - y1 + offset)``, all in the boxes' dtype.

    Args:
        boxes (Tensor): ``(N, 4)`` shifted boxes, sorted by group then score.
        counts (Tensor): ``(G,)`` group sizes in that order.
        iou_threshold (float): pairs with a larger IoU are edges.
        offset (int): mmcv's pixel offset (0 or 1).
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    group_end = counts.cumsum(0).repeat_interleave(counts)
    # pairs whose earlier box is one of the first i + 1 boxes
    ends = (group_end - torch.arange(boxes.size(0), device=boxes.device) - 1).cumsum(0)
    srcs: List[Tensor] = []
    dsts: List[Tensor] = []
    start = 0
    while start < boxes.size(0):
        # the longest run of earlier boxes whose pairs fit in one chunk (at least one box)
        base = int(ends[start - 1]) if start else 0
        end = max(start + 1, int(torch.searchsorted(ends, base + _PAIR_CHUNK, right=True)))
        src, dst = _group_pairs(group_end, start, end)
        w = (torch.minimum(x2[src], x2[dst]) - torch.maximum(x1[src], x1[dst]) + offset)
        h = (torch.minimum(y2[src], y2[dst]) - torch.maximum(y1[src], y1[dst]) + offset)
        inter = w.clamp_(min=0) * h.clamp_(min=0)
        over = inter / (areas[src] + areas[dst] - inter) > iou_threshold
        srcs.append(src[over])
        dsts.append(dst[over])
        start = end
    return torch.cat(srcs), torch.cat(dsts)


def _greedy(num: int, src: Tensor, dst: Tensor) -> Tensor:
    """Greedy NMS on a suppression graph: box ``j`` survives iff no surviving ``i`` has an edge
    ``i -> j`` (edges always point from earlier to later boxes).

    Returns:
        ``(num,)`` bool, True for surviving boxes.
    """
    undecided, kept = 0, 1
    state = torch.zeros(num, dtype=torch.int8, device=src.device)  # -1 suppressed
    while True:
        # a surviving box suppresses its later neighbours
        hit = torch.zeros(num, dtype=torch.bool, device=src.device)
        hit[dst[state[src] == kept]] = True
        state[hit & (state == undecided)] = -1
        # a box with no possibly-surviving earlier neighbour survives
        blocked = torch.zeros(num, dtype=torch.bool, device=src.device)
        blocked[dst[state[src] != -1]] = True
        state[~blocked & (state == undecided)] = kept
        live = (state[src] != -1) & (state[dst] == undecided)
        src, dst = src[live], dst[live]
        if not bool((state == undecided).any()):
            return state == kept


def _greedy_by_group(boxes: Tensor, scores: Tensor, counts: Tensor, iou_threshold: float,
                     offset: int) -> Tensor:
    """Greedy NMS inside each group: small groups together on their suppression edges, each
    large group through mmcv's kernel.

    Args:
        boxes (Tensor): ``(N, 4)`` shifted boxes, sorted by group then score.
        scores (Tensor): ``(N,)`` in the same order (descending within a group).
        counts (Tensor): ``(G,)`` group sizes in that order.
        iou_threshold (float): mmcv's threshold.
        offset (int): mmcv's pixel offset (0 or 1).

    Returns:
        ``(N,)`` bool, True for surviving boxes.
    """
    kept = torch.zeros(boxes.size(0), dtype=torch.bool, device=boxes.device)
    large = counts > _KERNEL_MIN_GROUP
    small = (~large).repeat_interleave(counts).nonzero().squeeze(1)
    if small.numel():
        src, dst = _suppression_edges(boxes[small], counts[~large], iou_threshold, offset)
        kept[small] = _greedy(small.numel(), src, dst)
    starts = counts.cumsum(0) - counts
    for start, size in zip(starts[large].tolist(), counts[large].tolist()):
        end = start + size
        kept[start + _ext.nms(boxes[start:end], scores[start:end],
                              iou_threshold=iou_threshold, offset=offset)] = True
    return kept


def batched_nms_batch(boxes: Tensor, scores: Tensor, labels: Tensor, img_ids: Tensor,
                      num_imgs: int, nms_cfg: Dict, max_per_img: Optional[int] = None
                      ) -> List[Tensor]:
    """Class-wise NMS of every image of a batch in one call.

    Per image equal to ``mmcv.ops.batched_nms(boxes_i, scores_i, labels_i, nms_cfg)`` followed
    by ``[:max_per_img]`` (mmdet's ``_bbox_post_process``), for ``nms_cfg`` that
    :func:`supports`.

    Args:
        boxes: ``(N, 4)`` x1y1x2y2 candidates of all images.
        scores: ``(N,)``.
        labels: ``(N,)`` class ids in ``[0, K)``.
        img_ids: ``(N,)`` image of each candidate, in ``[0, num_imgs)``.
        num_imgs: batch size ``B``.
        nms_cfg: ``dict(type='nms', iou_threshold=..., class_agnostic=False, offset=0)``.
        max_per_img: keep at most this many per image (None: all).

    Returns:
        ``B`` tensors of candidate indices (into the ``N`` inputs), each image's kept boxes by
        descending score (ties: lower index first), as mmcv's ``keep``.
    """
    if not supports(nms_cfg):
        raise ValueError(f'nms_cfg must be mmcv\'s plain nms with keys in '
                         f'{sorted(SUPPORTED_KEYS)}, got {nms_cfg}')
    num = boxes.size(0)
    if num == 0:
        return [img_ids.new_zeros(0) for _ in range(num_imgs)]
    boxes = boxes.float() if boxes.dtype != torch.float32 else boxes  # mmcv's kernel is fp32
    if nms_cfg.get('class_agnostic', False):
        group = img_ids
    else:
        boxes = _shifted_boxes(boxes, labels, img_ids, num_imgs)
        group = img_ids * (int(labels.max()) + 1) + labels
    # by group, then score descending (stable: ties keep index order)
    order = scores.argsort(descending=True, stable=True)
    order = order[group[order].argsort(stable=True)]
    counts = torch.unique_consecutive(group[order], return_counts=True)[1]
    keep = order[_greedy_by_group(boxes[order], scores[order].to(boxes.dtype), counts,
                                  float(nms_cfg['iou_threshold']), int(nms_cfg.get('offset', 0)))]
    # per image, by descending score, as mmcv returns them
    keep = keep[scores[keep].argsort(descending=True, stable=True)]
    keep = keep[img_ids[keep].argsort(stable=True)]
    per_img = torch.bincount(img_ids[keep], minlength=num_imgs).tolist()
    return [k if max_per_img is None else k[:max_per_img] for k in keep.split(per_img)]
