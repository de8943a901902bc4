"""Merging the detections of overlapping tiles into one set for the whole image.

Three steps, in this order (:func:`merge_tile_detections`):

1. **Cut boxes.** A detection whose box touches an edge of its tile that lies inside the image
   (within ``edge_margin`` pixels) may be an object cut by the tile border. It is dropped when a
   detection of the same class from another window, not touching an inner edge of its own window,
   covers it by an intersection over the smaller box's area (IoS) of at least ``cut_ios_thr``:
   that window saw the object whole. IoU would not do: a third of an object visible in one tile has
   an IoU of ~0.33 with the whole box, below any NMS threshold, and it may even score higher than
   the whole box. Boxes away from inner edges are never suppressed this way, so small objects
   lying inside larger ones survive.
2. **Merge** the rest: class-aware NMS (mmcv's ``batched_nms``), or SAHI's greedy
   non-maximum merging ("Slicing Aided Hyper Inference", Akyon et al., ICIP 2022; ``sahi``'s
   ``GreedyNMMPostprocess``): in descending score order, each box not yet merged absorbs the
   unmerged boxes of its class that match it (IoU or IoS ``>= iou_thr``); the merged box is the
   union of the group, its score the group's maximum.
3. The ``max_per_img`` best, by descending score.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils.errors import RetinaConfigError

MERGE_MODES = ('nms', 'greedy')
MATCH_METRICS = ('iou', 'ios')
# Rows of a pairwise-overlap matrix computed at once: bounds memory when many boxes share an
# x-range (256 x 100,000 pairs: ~100 MB per float32 temporary).
_CHUNK = 256


def pairwise_overlap(boxes1: Tensor, boxes2: Tensor, metric: str = 'iou') -> Tensor:
    """IoU, or intersection over the smaller box's area (IoS, as SAHI's), of every pair.

    Args:
        boxes1 (Tensor): ``(N, 4)`` x1, y1, x2, y2.
        boxes2 (Tensor): ``(M, 4)`` x1, y1, x2, y2.
        metric (str): ``'iou'`` or ``'ios'``; a box inside another has an IoS of 1.

    Returns:
        Tensor: ``(N, M)``; 0 where the divisor is 0.
    """
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(-1)[:, None]
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(-1)[None, :]
    divisor = torch.minimum(area1, area2) if metric == 'ios' else area1 + area2 - inter
    return torch.where(divisor > 0, inter / divisor.clamp(min=1e-12), inter.new_zeros(()))


def inner_edge_mask(bboxes: Tensor, windows: Tensor, height: int, width: int,
                    edge_margin: float) -> Tensor:
    """Which boxes touch an edge of their window that lies inside the image.

    Args:
        bboxes (Tensor): ``(N, 4)`` boxes in image pixels.
        windows (Tensor): ``(N, 4)`` the window ``(x1, y1, x2, y2)`` each box was found in.
        height (int): image height; window edges at 0 or the image size are not inner edges.
        width (int): image width.
        edge_margin (float): a box edge within this many pixels of a window edge touches it.

    Returns:
        Tensor: ``(N,)`` bool.
    """
    near_low = bboxes[:, :2] <= windows[:, :2] + edge_margin
    near_high = bboxes[:, 2:] >= windows[:, 2:] - edge_margin
    inner_low = windows[:, :2] > 0
    inner_high = windows[:, 2:] < windows.new_tensor([width, height])
    return ((near_low & inner_low) | (near_high & inner_high)).any(-1)


def suppress_cut_boxes(bboxes: Tensor, labels: Tensor, window_ids: Tensor, cut: Tensor,
                       ios_thr: float) -> Tensor:
    """Which detections to keep after dropping cut boxes that another window saw whole.

    Args:
        bboxes (Tensor): ``(N, 4)`` boxes in image pixels.
        labels (Tensor): ``(N,)`` class indices.
        window_ids (Tensor): ``(N,)`` index of the window each box comes from.
        cut (Tensor): ``(N,)`` bool, the box touches an inner edge of its window.
        ios_thr (float): least IoS of a cut box with a whole box (> 0).

    Returns:
        Tensor: ``(N,)`` bool keep mask; False only for cut boxes.
    """
    first, second = matching_pairs(bboxes, labels, ios_thr, 'ios')
    other_window = window_ids[first] != window_ids[second]
    keep = torch.ones_like(cut)
    keep[first[cut[first] & ~cut[second] & other_window]] = False
    keep[second[cut[second] & ~cut[first] & other_window]] = False
    return keep


def matching_pairs(bboxes: Tensor, labels: Tensor, match_thr: float, metric: str = 'iou'
                   ) -> Tuple[Tensor, Tensor]:
    """Pairs of overlapping boxes of the same class whose IoU / IoS is at least ``match_thr``.

    Boxes are sorted by their left edge (each class shifted right past the previous one), so
    a block of ``_CHUNK`` boxes is compared only with the boxes that start before the block's
    rightmost right edge: the cost grows with the number of boxes times their neighbours, not
    with its square, for the many small boxes of a large image.

    Args:
        bboxes (Tensor): ``(N, 4)`` x1, y1, x2, y2.
        labels (Tensor): ``(N,)`` class indices.
        match_thr (float): least overlap of a pair.
        metric (str): ``'iou'`` or ``'ios'``.

    Returns:
        Tuple[Tensor, Tensor]: ``first`` ``(P,)`` and ``second`` ``(P,)`` indices into the
        input, ``first < second``, sorted by ``first`` then ``second``.
    """
    if len(labels) == 0:
        empty = labels.new_zeros((0,), dtype=torch.long)
        return empty, empty
    # float64: shifted by up to (classes x image width), float32 would round the edges
    span = float((bboxes[:, 2].max() - bboxes[:, 0].min()).clamp(min=0)) + 1.0
    x1 = bboxes[:, 0].double() + labels.double() * span
    x2 = bboxes[:, 2].double() + labels.double() * span
    order = x1.argsort()
    x1_sorted = x1[order].contiguous()
    right = x2[order].contiguous()
    sorted_boxes, sorted_labels = bboxes[order], labels[order]
    firsts, seconds = [], []
    for start in range(0, len(order), _CHUNK):
        stop = min(start + _CHUNK, len(order))
        # boxes starting right of the block's rightmost edge overlap none of the block
        end = int(torch.searchsorted(x1_sorted, right[start:stop].max(), right=True))
        rows = torch.arange(start, stop, device=labels.device)
        cols = torch.arange(start, max(end, stop), device=labels.device)
        overlap = pairwise_overlap(sorted_boxes[rows], sorted_boxes[cols], metric)
        match = (overlap >= match_thr) & (overlap > 0) & (rows[:, None] < cols) & \
            (sorted_labels[rows, None] == sorted_labels[None, cols])
        i, j = match.nonzero(as_tuple=True)
        firsts.append(order[rows[i]])
        seconds.append(order[cols[j]])
    a, b = torch.cat(firsts), torch.cat(seconds)
    first, second = torch.minimum(a, b), torch.maximum(a, b)
    key = (first * len(labels) + second).argsort()
    return first[key], second[key]


def greedy_merge(bboxes: Tensor, scores: Tensor, labels: Tensor, match_thr: float,
                 metric: str = 'ios') -> InstanceData:
    """SAHI's greedy non-maximum merging, class by class.

    Args:
        bboxes (Tensor): ``(N, 4)`` boxes.
        scores (Tensor): ``(N,)`` scores.
        labels (Tensor): ``(N,)`` class indices.
        match_thr (float): two boxes of a class match when their ``metric`` is ``>=`` this.
        metric (str): ``'iou'`` or ``'ios'`` (over the smaller box's area).

    Returns:
        InstanceData: ``bboxes`` ``(M, 4)`` (unions of the merged groups), ``scores`` ``(M,)``
        (each group's best) and ``labels`` ``(M,)``, in descending score order.
    """
    order = scores.argsort(descending=True, stable=True)
    bboxes, scores, labels = bboxes[order], scores[order], labels[order]
    if len(scores) == 0:
        return InstanceData(bboxes=bboxes, scores=scores, labels=labels)
    first, second = (t.tolist() for t in matching_pairs(bboxes, labels, match_thr, metric))
    # the sequential part, on the (sparse) matching pairs only: each box not yet merged leads a
    # group of its unmerged matches, in descending score order
    leader = list(range(len(scores)))
    merged = [False] * len(scores)
    for i, j in zip(first, second):
        if not merged[i] and not merged[j]:
            merged[j] = True
            leader[j] = i
    group = torch.tensor(leader, device=bboxes.device)
    lows = bboxes[:, :2].new_full((len(scores), 2), float('inf')).scatter_reduce(
        0, group[:, None].expand(-1, 2), bboxes[:, :2], 'amin')
    highs = bboxes[:, 2:].new_full((len(scores), 2), float('-inf')).scatter_reduce(
        0, group[:, None].expand(-1, 2), bboxes[:, 2:], 'amax')
    keep = group == torch.arange(len(scores), device=bboxes.device)
    return InstanceData(bboxes=torch.cat([lows, highs], 1)[keep], scores=scores[keep],
                        labels=labels[keep])


def merge_tile_detections(dets: InstanceData, windows: Tensor, height: int, width: int,
                          merge: str = 'nms', iou_thr: float = 0.5, metric: str = 'ios',
                          cut_ios_thr: Optional[float] = 0.8, edge_margin: float = 2.0,
                          max_per_img: Optional[int] = None) -> InstanceData:
    """Merges detections gathered from overlapping windows (see the module docstring).

    Args:
        dets (InstanceData): ``bboxes`` ``(N, 4)`` in image pixels, ``scores`` ``(N,)``,
            ``labels`` ``(N,)`` and ``window_ids`` ``(N,)``: the row of ``windows`` each came
            from (a whole-image pass: a window covering the image, never cut).
        windows (Tensor): ``(W, 4)`` windows ``(x1, y1, x2, y2)`` in image pixels.
        height (int): image height in pixels.
        width (int): image width in pixels.
        merge (str): ``'nms'`` (class-aware NMS at IoU ``iou_thr``) or ``'greedy'``.
        iou_thr (float): NMS IoU threshold, or the greedy merge's match threshold.
        metric (str): the greedy merge's match metric, ``'ios'`` or ``'iou'``.
        cut_ios_thr (float | None): IoS at which a whole box suppresses a cut box; None keeps
            cut boxes (plain merging).
        edge_margin (float): pixels from an inner window edge within which a box counts as cut.
        max_per_img (int | None): keep at most this many detections; None keeps all.

    Returns:
        InstanceData: ``bboxes`` ``(M, 4)``, ``scores`` ``(M,)``, ``labels`` ``(M,)`` (class
        indices), by descending score.
    """
    bboxes, scores, labels = dets.bboxes, dets.scores, dets.labels
    if cut_ios_thr is not None and len(scores):
        cut = inner_edge_mask(bboxes, windows[dets.window_ids].to(bboxes), height, width,
                              edge_margin)
        keep = suppress_cut_boxes(bboxes, labels, dets.window_ids, cut, cut_ios_thr)
        bboxes, scores, labels = bboxes[keep], scores[keep], labels[keep]
    if merge == 'greedy':
        out = greedy_merge(bboxes, scores, labels, iou_thr, metric)
    elif len(scores):
        from mmcv.ops import batched_nms
        _, keep = batched_nms(bboxes, scores, labels, dict(iou_threshold=iou_thr))
        out = InstanceData(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep])
    else:
        out = InstanceData(bboxes=bboxes, scores=scores, labels=labels)
    return out[:max_per_img] if max_per_img is not None else out


def check_merge(merge: str, metric: str, thresholds: Sequence[tuple]) -> None:
    """Raises RetinaConfigError for an unknown ``merge`` / ``metric`` or a threshold outside [0, 1].

    Args:
        merge (str): ``'nms'`` or ``'greedy'``.
        metric (str): ``'iou'`` or ``'ios'``.
        thresholds (Sequence[tuple]): ``(name, value)`` pairs; a None value is skipped.
    """
    if merge not in MERGE_MODES:
        raise RetinaConfigError(f'merge must be one of {MERGE_MODES}, got {merge!r}')
    if metric not in MATCH_METRICS:
        raise RetinaConfigError(f'merge_metric must be one of {MATCH_METRICS}, got {metric!r}')
    for name, value in thresholds:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0.0 <= value <= 1.0):
            raise RetinaConfigError(f'{name} must be a number in [0, 1], got {value!r}')
