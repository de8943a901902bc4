"""Class-wise NMS of a whole padded batch, equal to mmcv's ``batched_nms`` image by image.

mmdet post-processes image by image: mmcv's ``batched_nms`` shifts each class's boxes by
``label * (max coordinate of the image's candidates + 1)`` so that classes never overlap, then
its greedy kernel keeps boxes by descending score and drops every later box whose IoU with a
kept one exceeds the threshold. Here the candidates of all images arrive as one ``(B, M)`` table
with a validity mask and are resolved together, with two host synchronisations in all:

1. boxes are shifted exactly as mmcv shifts them, per image (:func:`class_offset_boxes`, which
   the exported ONNX graph uses too), so every IoU below is bitwise the one mmcv's kernel
   computes: the same fp32 operations in the same order, ``inter / union > thr`` as its CPU
   kernel, ``inter > thr * union`` as its CUDA kernel. Images are kept apart by grouping, not by
   another shift, which would change the rounding;
2. the valid candidates are sorted by (image, class, descending score); **one host read** gives
   their number and the size of the largest (image, class) group;
3. greedy suppression runs in rounds over all groups at once: in each round the best undecided
   box of every group is kept (every better box of its group is decided and no kept one
   overlaps it, so greedy keeps it) and drops the undecided boxes of its group it overlaps.
   After ``r`` rounds the first ``r`` kept boxes of every group are decided; a group's
   ``(P + 1)``-th kept box has ``P`` better kept boxes in its image, so
   ``min(max_per_img, largest group)`` rounds decide every box that can be returned, with no
   host read in between (without ``max_per_img``, a read every ``_CHECK_EVERY`` rounds stops
   them once every box is decided). On CUDA, where Triton imports, one kernel launch
   (``_triton_nms.py``) runs this greedy scan, one program per group, instead of the rounds;
   on the CPU, where host reads are free but small ops are not, mmcv's own CPU kernel scans
   each image's shifted candidates;
4. per image, the kept boxes by descending score, the first ``max_per_img``; **one host read**
   gives their numbers.

Boxes with equal scores are ordered by their index (a stable sort); mmcv's kernel sorts scores
with an unspecified order for ties, so only exactly tied scores can differ.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ...utils.errors import RetinaConfigError
from ...utils.triton_device import on_triton_device

# nms_cfg keys this implementation honours; any other key (or another ``type``) makes the
# head fall back to mmcv's ``batched_nms`` image by image, and the exporter refuse the config.
SUPPORTED_KEYS = frozenset({'type', 'iou_threshold', 'class_agnostic', 'split_thr', 'offset'})
# Without max_per_img, the rounds stop early: a host read every this many rounds
_CHECK_EVERY = 16


def supports(nms_cfg: Dict) -> bool:
    """Whether :func:`batched_nms_padded` implements ``nms_cfg`` (mmcv's plain ``'nms'``)."""
    return nms_cfg.get('type', 'nms') == 'nms' and set(nms_cfg) <= SUPPORTED_KEYS \
        and nms_cfg.get('offset', 0) in (0, 1)


def class_offset_boxes(boxes: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """mmcv ``batched_nms``'s class separation, per image: ``boxes + label * (max + 1)``.

    ``max`` is the largest coordinate among the image's valid candidates, as mmcv computes it
    over the candidates mmdet passes it; so the shifted coordinates, and hence the IoUs, round as
    mmcv's do. Traceable (no data-dependent shape), for exported graphs too.

    Args:
        boxes (Tensor): ``(B, M, 4)`` x1y1x2y2.
        labels (Tensor): ``(B, M)`` class ids.
        valid (Tensor): ``(B, M)`` bool, candidates that reach NMS.

    Returns:
        Tensor: ``(B, M, 4)`` shifted boxes.
    """
    masked = torch.where(valid[..., None], boxes, float('-inf'))  # a scalar: no host copy
    top = masked.amax(dim=(1, 2))
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # no valid candidate
    return boxes + (labels.to(boxes.dtype) * (top[:, None] + 1))[..., None]


def _sorted_candidates(scores: Tensor, group: Tensor, valid: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The valid candidates first, by group then descending score (ties: lower index first).

    Args:
        scores (Tensor): ``(N,)``.
        group (Tensor): ``(N,)`` long group ids ``>= 0``.
        valid (Tensor): ``(N,)`` bool.

    Returns:
        Tuple[Tensor, Tensor, Tensor, Tensor]: ``order`` ``(N,)``, a permutation of the
        candidates; ``segment`` ``(N,)`` long, the index of each sorted candidate's group among
        the sorted groups (non-decreasing, from 0; the invalid candidates form the last group);
        the size of the largest group of valid candidates, a 0-dim long tensor; and
        ``by_score`` ``(N,)``, all candidates by descending score alone (ties: lower index).
    """
    by_score = scores.argsort(descending=True, stable=True)
    key = torch.where(valid, group, group.max() + 1)[by_score]
    by_group = key.argsort(stable=True)
    order, key = by_score[by_group], key[by_group]
    starts = torch.ones_like(valid)
    starts[1:] = key[1:] != key[:-1]
    segment = starts.long().cumsum(0) - 1
    sizes = torch.zeros_like(segment).index_add_(0, segment, valid[order].long())
    return order, segment, sizes.max(), by_score


def _greedy_rounds(boxes: Tensor, segment: Tensor, rounds: int, iou_threshold: float,
                   offset: int, cuda_rule: bool, stop_early: bool = False) -> Tensor:
    """Greedy NMS inside contiguous groups, one kept box per group and round.

    Args:
        boxes (Tensor): ``(D, 4)`` fp32 shifted boxes, sorted by group then descending score.
        segment (Tensor): ``(D,)`` long group index of each box, non-decreasing, in ``[0, D)``.
        rounds (int): rounds to run (see the module docstring).
        iou_threshold (float): a box is dropped when its IoU with a kept one exceeds this.
        offset (int): mmcv's pixel offset (0 or 1).
        cuda_rule (bool): mmcv's CUDA test ``inter > thr * union``; False: its CPU test
            ``inter / union > thr``.
        stop_early (bool): every ``_CHECK_EVERY`` rounds, stop once no box is undecided (a
            host read each time; for an unbounded ``max_per_img``, where ``rounds`` is the
            largest group and most groups finish far earlier).

    Returns:
        Tensor: ``(D,)`` bool, True for boxes kept in those rounds.
    """
    num = boxes.size(0)
    x1, y1, x2, y2 = boxes.unbind(1)
    # mmcv's areas: (x2 - x1 + offset) * (y2 - y1 + offset), in the boxes' dtype
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    low, high = boxes[:, :2], boxes[:, 2:]
    # one extra row, read by groups that have no undecided box left (their boxes are decided)
    table = torch.cat([torch.cat([boxes, areas[:, None]], 1), boxes.new_zeros(1, 5)])
    pos = torch.arange(num, device=boxes.device)
    undecided = torch.ones(num, dtype=torch.bool, device=boxes.device)
    kept = torch.zeros_like(undecided)
    first = torch.empty_like(pos)
    for step in range(rounds):
        if stop_early and step % _CHECK_EVERY == _CHECK_EVERY - 1 and not undecided.any():
            break
        first.fill_(num).scatter_reduce_(0, segment, torch.where(undecided, pos, num), 'amin')
        pick = first.index_select(0, segment)
        picked = table.index_select(0, pick)  # (D, 5): x1, y1, x2, y2, area
        # (w, h) = max(0, min(x2, y2) - max(x1, y1) + offset), as mmcv's std::max / fmaxf
        # (x and y at once, relu_: the fewest and fastest ops on small tensors)
        wh = torch.minimum(picked[:, 2:4], high) - torch.maximum(picked[:, :2], low)
        if offset:
            wh += offset
        wh.relu_()
        inter = wh[:, 0] * wh[:, 1]
        union = picked[:, 4] + areas - inter
        over = inter > iou_threshold * union if cuda_rule else inter / union > iou_threshold
        is_pick = pick == pos
        kept |= is_pick
        undecided &= ~(over | is_pick)
    return kept


def _host_kernel(boxes: Tensor) -> bool:
    """Whether the greedy scan runs as mmcv's CPU kernel: CPU tensors outside Triton's
    interpreter. On the CPU reading the host costs nothing and each small op's overhead is
    what counts, so one compiled scan per image beats a few hundred tensor ops per round."""
    return boxes.device.type == 'cpu' and not on_triton_device(boxes)


def _greedy_mmcv_cpu(boxes: Tensor, scores: Tensor, image_counts: List[int],
                     iou_threshold: float, offset: int) -> Tensor:
    """mmcv's ``nms`` (its CPU kernel, the one mmdet reaches there) on each image's shifted
    boxes: the class shift keeps classes apart exactly as in mmcv's ``batched_nms``.

    Args:
        boxes (Tensor): ``(D, 4)`` fp32 shifted boxes, image after image.
        scores (Tensor): ``(D,)`` their scores.
        image_counts (List[int]): boxes of each image, summing to ``D``.
        iou_threshold (float): a box is dropped when its IoU with a kept one exceeds this.
        offset (int): mmcv's pixel offset (0 or 1).

    Returns:
        Tensor: ``(D,)`` bool, True for kept boxes.
    """
    from mmcv.ops import nms
    kept = torch.zeros(boxes.size(0), dtype=torch.bool)
    start = 0
    for count in image_counts:
        if count:
            _, keep = nms(boxes[start:start + count], scores[start:start + count],
                          iou_threshold, offset=offset)
            kept[start + keep] = True
        start += count
    return kept


def _greedy(boxes: Tensor, scores: Tensor, segment: Tensor, image_counts: List[int],
            rounds: int, iou_threshold: float, offset: int, stop_early: bool) -> Tensor:
    """The greedy scan over the sorted candidates, on the device's fastest path, chosen here
    alone: mmcv's CPU kernel per image for CPU tensors (:func:`_host_kernel`); where Triton
    kernels run (CUDA, or the CPU under Triton's interpreter for tests), one launch of
    ``_triton_nms.py``; else, or without Triton, :func:`_greedy_rounds`. mmcv's kernels differ
    in their IoU test: ``nms_cpu`` divides, ``nms_cuda`` multiplies the threshold; each device
    follows its own.

    Args:
        boxes (Tensor): ``(D, 4)`` fp32 shifted boxes, by group then descending score.
        scores (Tensor): ``(D,)`` their scores.
        segment (Tensor): ``(D,)`` long group index of each box (see :func:`_greedy_rounds`).
        image_counts (List[int]): boxes of each image, summing to ``D``.
        rounds (int): greedy rounds that decide every box that can be returned.
        iou_threshold (float): a box is dropped when its IoU with a kept one exceeds this.
        offset (int): mmcv's pixel offset (0 or 1).
        stop_early (bool): see :func:`_greedy_rounds`.

    Returns:
        Tensor: ``(D,)`` bool, True for kept boxes.
    """
    if _host_kernel(boxes):
        return _greedy_mmcv_cpu(boxes, scores.float(), image_counts, iou_threshold, offset)
    args = (boxes, segment, rounds, iou_threshold, offset, boxes.is_cuda)
    if on_triton_device(boxes):
        try:
            from ._triton_nms import greedy_triton
        except ImportError:  # no Triton: the pure-tensor rounds
            return _greedy_rounds(*args, stop_early)
        return greedy_triton(*args)
    return _greedy_rounds(*args, stop_early)


def batched_nms_padded(boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor,
                       nms_cfg: Dict, max_per_img: Optional[int] = None
                       ) -> Tuple[Tensor, List[int]]:
    """Class-wise NMS of every image of a padded batch, with two host reads (with
    ``max_per_img``; without, more where the greedy rounds run on the CPU, see the module
    docstring).

    Per image equal to ``mmcv.ops.batched_nms(boxes_i, scores_i, labels_i, nms_cfg)`` on its
    valid candidates followed by ``[:max_per_img]`` (mmdet's ``_bbox_post_process``), for
    ``nms_cfg`` that :func:`supports`.

    Args:
        boxes (Tensor): ``(B, M, 4)`` x1y1x2y2 candidates (any float dtype; NMS runs in fp32 as
            mmcv's kernel does).
        scores (Tensor): ``(B, M)``.
        labels (Tensor): ``(B, M)`` long class ids ``>= 0``.
        valid (Tensor): ``(B, M)`` bool, the candidates that take part (the others are never
            kept).
        nms_cfg (Dict): ``dict(type='nms', iou_threshold=..., class_agnostic=False,
            split_thr=10000, offset=0)``.
        max_per_img (int, optional): keep at most this many per image (None or <= 0: all).

    Returns:
        Tuple[Tensor, List[int]]: ``keep`` ``(S,)`` long indices into the flattened ``B * M``
        candidates, image after image, each image's kept boxes by descending score (ties: lower
        index first) as mmcv's ``keep``; and the number of kept boxes of each image (``B``
        ints summing to ``S``).
    """
    if not supports(nms_cfg):
        raise RetinaConfigError(f"nms_cfg must be mmcv's plain nms with keys in "
                                f'{sorted(SUPPORTED_KEYS)} and offset 0 or 1, got {nms_cfg}')
    batch, num = scores.shape
    if batch * num == 0:
        return labels.new_zeros(0), [0] * batch
    boxes = boxes.float()  # mmcv's kernel is fp32
    img = torch.arange(batch, device=scores.device)[:, None].expand(-1, num)
    valid_counts = valid.sum(1)
    if nms_cfg.get('class_agnostic', False):
        group = img
    else:
        # also mmcv's class-by-class path (images of >= split_thr candidates) reads the shifted
        # boxes, so split_thr changes nothing
        boxes = class_offset_boxes(boxes, labels, valid)
        group = img * (labels.max() + 1) + labels
    order, segment, largest, by_score = _sorted_candidates(scores.flatten(), group.flatten(),
                                                           valid.flatten())
    # host read 1: the candidates that take part (per image), and the rounds they need
    num_valid, largest, *valid_counts = torch.cat(
        [valid_counts.sum()[None], largest[None], valid_counts]).tolist()
    bounded = max_per_img is not None and max_per_img > 0
    rounds = min(largest, max_per_img) if bounded else largest
    order = order[:num_valid]
    kept = _greedy(boxes.flatten(0, 1)[order], scores.flatten()[order], segment[:num_valid],
                   valid_counts, rounds, float(nms_cfg['iou_threshold']),
                   int(nms_cfg.get('offset', 0)), stop_early=not bounded)
    kept = torch.zeros_like(valid).flatten().index_put_((order,), kept)  # (B * M,)
    # per image, the kept boxes first, by descending score (ties: by index): one stable sort of
    # the candidates in score order
    rank = by_score.div(num, rounding_mode='floor') * 2 + (~kept[by_score]).long()
    by_image = by_score[rank.argsort(stable=True)]
    # host read 2: how many each image kept
    kept_counts = kept.view(batch, num).sum(1).tolist()
    if bounded:
        kept_counts = [min(n, max_per_img) for n in kept_counts]
    keep = torch.cat([by_image[i * num:i * num + n] for i, n in enumerate(kept_counts)])
    return keep, kept_counts
