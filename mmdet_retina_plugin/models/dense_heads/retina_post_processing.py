"""Post-processing of an anchor head's outputs for a whole batch, on fixed shapes.

The steps of mmdet's ``BaseDenseHead.predict_by_feat`` (and detectron2's
``_decode_per_level_predictions``), with the settings of :class:`~.PostProcessSettings`. Up to
the NMS every tensor's shape follows from the batch's shapes and the settings alone (no
``nonzero``, no ``.item()``), so the host waits for the device twice per batch, both in step 5.
Steps 1 to 4 are :func:`select_candidates`, which the ONNX exporter calls too:

1. :func:`select_level_topk`: per level, for the whole batch, the ``min(nms_pre, Hi*Wi*A*K)``
   best (anchor, class) pairs of each image (:func:`topk_rows`), read on the logits in their
   memory order, NCHW or channels-last (no permute copy, no sigmoid over every pair); whether a
   pair's score passes ``score_thr`` is a mask carried along, not a filter;
2. :func:`gather_level`: the deltas and anchors of the selected pairs;
3. :func:`decode_boxes`, :func:`clip_boxes`, :func:`rescale_boxes`;
4. :func:`min_size_mask`, and-ed into the mask (mmdet's ``min_bbox_size``);
5. :func:`detections_by_image`: one class-wise NMS for the whole batch
   (``models/layers/batched_nms.py``: two host reads), ``max_per_img`` and the split into
   per-image ``InstanceData``; without NMS, the valid candidates (one host read). NMS configs
   that module does not implement (e.g. ``soft_nms``) go through mmcv's ``batched_nms`` image
   by image, which reads the host once or more per image.

With ``nms_pre <= 0`` (every pair above ``score_thr``) the top-k of step 1 is sized by the
largest per-image candidate count of each level, one more host read
(:func:`level_topk_sizes`).
"""
from __future__ import annotations

import math
from itertools import accumulate
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from mmcv.ops import batched_nms
from mmdet.utils import InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..layers.batched_nms import batched_nms_padded
from ..layers.batched_nms import supports as batched_nms_supports
from .retina_box_coding import decode_boxes
from .retina_gts import clip_boxes, host_tensor
from .retina_post_settings import PostProcessSettings

#: ``(logits (B, N), k) -> (values (B, k'), column indices (B, k'))``, descending per row
TopK = Callable[[Tensor, int], Tuple[Tensor, Tensor]]

# Width of the blocks whose maxima pre-select the top-k (see topk_rows): the first pass reads
# every logit once, vectorised; the second sorts k blocks of this many.
_BLOCK = 64


class LevelSelection(NamedTuple):
    """The pairs :func:`select_level_topk` kept on one level.

    Attributes:
        scores (Tensor): ``(B, k)`` sigmoid scores, descending per image.
        labels (Tensor): ``(B, k)`` long classes in ``[0, K)``.
        base (Tensor): ``(B, k)`` long base anchor in ``[0, Ab)``.
        pixel (Tensor): ``(B, k)`` long location ``y * W + x``.
    """

    scores: Tensor
    labels: Tensor
    base: Tensor
    pixel: Tensor


def logit_floor(score_thr: float) -> float:
    """A logit below which no sigmoid score exceeds ``score_thr`` (with a small margin, so that
    counting the logits above it never undercounts the pairs whose ``sigmoid > score_thr``)."""
    if score_thr <= 0:
        return -math.inf
    if score_thr >= 1:
        return math.inf
    return math.log(score_thr / (1 - score_thr)) - 1e-3


def level_topk_sizes(cls_scores: Sequence[Tensor], settings: PostProcessSettings) -> List[int]:
    """The ``k`` of each level's top-k: ``nms_pre``, or with ``nms_pre <= 0`` the largest
    number of an image's pairs above ``score_thr`` on the level (one host read for all levels).

    Args:
        cls_scores (Sequence[Tensor]): ``[(B, Ab*K, Hi, Wi)]`` logits, any memory layout.
        settings (PostProcessSettings): the head's test settings.

    Returns:
        List[int]: one ``k`` per level.
    """
    if settings.nms_pre > 0:
        return [settings.nms_pre] * len(cls_scores)
    floor = logit_floor(settings.score_thr)
    counts = torch.stack([(s.detach() > floor).sum((1, 2, 3)) for s in cls_scores])  # (L, B)
    return counts.amax(1).tolist()


def topk_rows(logits: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Per row, the ``min(k, N)`` largest entries, without sorting the whole row.

    The maxima of blocks of ``_BLOCK`` consecutive entries are computed first; the ``k``
    blocks with the largest maxima hold the row's ``k`` largest entries (a block left out has
    a maximum no larger than ``k`` other blocks', each holding an entry at least as large), so
    ``topk`` then runs over ``k * _BLOCK`` entries instead of ``N``. Only the order among equal
    values can differ from ``logits.topk(k)``.

    Args:
        logits (Tensor): ``(B, N)``, rows of unit stride (any row stride; a view is read in
            place).
        k (int): entries per row, >= 0.

    Returns:
        Tuple[Tensor, Tensor]: ``values`` ``(B, min(k, N))`` descending and their column
        indices ``(B, min(k, N))``.
    """
    batch, num = logits.shape
    k = min(k, num)
    num_blocks = num // _BLOCK
    if num_blocks <= 2 * k:  # too few blocks to pay for the first pass
        return logits.topk(k, dim=1)
    body = logits[:, :num_blocks * _BLOCK].unflatten(1, (num_blocks, _BLOCK))
    blocks = body.amax(2).topk(k, dim=1).indices  # (B, k)
    inside = torch.arange(_BLOCK, device=logits.device)
    cols = torch.cat([(blocks[..., None] * _BLOCK + inside).flatten(1),  # (B, k * _BLOCK)
                      torch.arange(num_blocks * _BLOCK, num, device=logits.device)
                      .expand(batch, -1)], 1)  # the tail that fills no block
    values, picked = logits.gather(1, cols).topk(k, dim=1)
    return values, cols.gather(1, picked)


def select_level_topk(cls_score: Tensor, num_classes: int, k: int,
                      topk: TopK = topk_rows) -> LevelSelection:
    """The ``k`` best (anchor, class) pairs of one level for each image.

    Args:
        cls_score (Tensor): ``(B, Ab*K, H, W)`` logits; channel ``a*K + k`` is class ``k`` of
            base anchor ``a``. Read in its memory order, NCHW or channels-last, without a copy.
        num_classes (int): ``K``.
        k (int): pairs kept per image (all ``H*W*Ab*K`` if larger).
        topk (TopK): the row-wise top-k (the exporter's has a fixed output width).

    Returns:
        LevelSelection: scores, classes and positions of the best pairs, ``(B, k')`` each
        (``k' = min(k, H*W*Ab*K)`` with :func:`topk_rows`).
    """
    batch, channels, height, width = cls_score.shape
    logits = cls_score.detach()
    if not logits.is_contiguous() and logits.is_contiguous(memory_format=torch.channels_last):
        # flat index into (H*W, Ab*K): pixel * Ab*K + a*K + k (mmdet's own order)
        top_logits, flat = topk(logits.permute(0, 2, 3, 1).reshape(batch, -1), k)
        channel, pixel = flat % channels, flat // channels
    else:
        # flat index into (Ab*K, H*W): (a*K + k) * H*W + pixel; no remainder by H*W, which
        # the dynamo exporter cannot take of a symbolic size
        top_logits, flat = topk(logits.reshape(batch, -1), k)
        channel = flat // (height * width)
        pixel = flat - channel * (height * width)
    return LevelSelection(top_logits.sigmoid(), channel % num_classes, channel // num_classes,
                          pixel)


def gather_level(bbox_pred: Tensor, anchors: Tensor, base: Tensor,
                 pixel: Tensor) -> Tuple[Tensor, Tensor]:
    """Deltas and anchors of selected positions of one level.

    Args:
        bbox_pred (Tensor): ``(B, Ab*D, H, W)`` deltas (``D`` = the coder's ``encode_size``),
            any memory layout (read by indexing, no copy).
        anchors (Tensor): ``(H*W*Ab, 4)`` the level's anchors (row, column, base anchor order).
        base (Tensor): ``(B, k)`` base anchors.
        pixel (Tensor): ``(B, k)`` locations ``y * W + x``.

    Returns:
        Tuple[Tensor, Tensor]: ``(B, k, D)`` deltas and ``(B, k, 4)`` anchors.
    """
    batch, _, height, width = bbox_pred.shape
    num_base = anchors.size(0) // (height * width)
    deltas = bbox_pred.detach().unflatten(1, (num_base, -1))  # (B, Ab, D, H, W), a view
    batch_idx = torch.arange(batch, device=pixel.device)[:, None]
    return (deltas[batch_idx, base, :, pixel // width, pixel % width],
            anchors[pixel * num_base + base])


def rescale_boxes(bboxes: Tensor, scale_factors: Tensor) -> Tensor:
    """Maps ``(B, M, 4)`` boxes back to the original images, dividing by each image's
    ``(B, 2)`` ``scale_factor`` ``(w_scale, h_scale)`` (mmdet's ``img_meta['scale_factor']``)."""
    return bboxes * (1 / scale_factors).repeat(1, 2)[:, None]


def min_size_mask(bboxes: Tensor, min_size: float) -> Tensor:
    """``(B, M)`` bool: width and height both above ``min_size`` (mmdet's ``min_bbox_size``)."""
    return (bboxes[..., 2] - bboxes[..., 0] > min_size) \
        & (bboxes[..., 3] - bboxes[..., 1] > min_size)


class Candidates(NamedTuple):
    """The candidates of a batch before NMS (:func:`select_candidates`).

    Attributes:
        bboxes (Tensor): ``(B, M, 4)`` x1y1x2y2, clipped to each image.
        scores (Tensor): ``(B, M)`` sigmoid scores.
        labels (Tensor): ``(B, M)`` long classes in ``[0, K)``.
        valid (Tensor): ``(B, M)`` bool, above ``score_thr`` and ``min_bbox_size``.
    """

    bboxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor


def select_candidates(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      level_anchors: Sequence[Tensor], num_classes: int, bbox_coder: object,
                      settings: PostProcessSettings, level_k: Sequence[int], img_hw: Tensor,
                      scale_factors: Union[Tensor, Sequence[Sequence[float]], None] = None,
                      topk: TopK = topk_rows) -> Candidates:
    """Steps 1 to 4 of the module docstring: per-level top-k, gather, decode, clip, rescale and
    the ``score_thr`` / ``min_bbox_size`` mask, for the whole batch.

    Args:
        cls_scores (Sequence[Tensor]): ``[(B, Ab*K, Hi, Wi)]`` logits.
        bbox_preds (Sequence[Tensor]): ``[(B, Ab*D, Hi, Wi)]`` deltas.
        level_anchors (Sequence[Tensor]): ``[(Hi*Wi*Ab, 4)]`` anchors of each level.
        num_classes (int): ``K``.
        bbox_coder (object): decodes the deltas; its ``clip_border`` (default True) clips.
        settings (PostProcessSettings): ``score_thr`` and ``min_bbox_size``.
        level_k (Sequence[int]): pairs kept per level and image (:func:`level_topk_sizes`).
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)`` (``img_shape``), any dtype.
        scale_factors (Tensor | Sequence[Sequence[float]], optional): per image
            ``(w_scale, h_scale)``, ``(B, 2)``: map the boxes back to the original images
            before the size mask (mmdet's ``rescale``); None keeps input pixels.
        topk (TopK): the row-wise top-k of :func:`select_level_topk`.

    Returns:
        Candidates: ``M = sum`` of the levels' ``k'``.
    """
    scores, labels, deltas, anchors = [], [], [], []
    for cls_score, bbox_pred, level, k in zip(cls_scores, bbox_preds, level_anchors, level_k):
        sel = select_level_topk(cls_score, num_classes, k, topk)
        level_deltas, level_priors = gather_level(bbox_pred, level, sel.base, sel.pixel)
        scores.append(sel.scores)
        labels.append(sel.labels)
        deltas.append(level_deltas)
        anchors.append(level_priors)
    scores, labels = torch.cat(scores, 1), torch.cat(labels, 1)  # (B, M)
    valid = scores > settings.score_thr  # mmdet's exact test, on the selected pairs
    bboxes = decode_boxes(bbox_coder, torch.cat(anchors, 1), torch.cat(deltas, 1))
    if getattr(bbox_coder, 'clip_border', True):
        bboxes = clip_boxes(bboxes, img_hw.to(bboxes.dtype))
    if scale_factors is not None:
        if not isinstance(scale_factors, Tensor):  # new_tensor would wait on CUDA
            scale_factors = host_tensor(scale_factors, bboxes.dtype, bboxes.device)
        bboxes = rescale_boxes(bboxes, scale_factors.to(bboxes.dtype))
    if settings.min_bbox_size >= 0:
        valid = valid & min_size_mask(bboxes, settings.min_bbox_size)
    return Candidates(bboxes, scores, labels, valid)


def detections_by_image(bboxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor,
                        nms_cfg: Optional[Dict] = None,
                        max_per_img: Optional[int] = None) -> InstanceList:
    """Class-wise NMS and ``max_per_img`` of each image's valid candidates, split by image.

    Args:
        bboxes (Tensor): ``(B, M, 4)`` x1y1x2y2.
        scores (Tensor): ``(B, M)``.
        labels (Tensor): ``(B, M)`` long classes in ``[0, K)``.
        valid (Tensor): ``(B, M)`` bool, candidates that passed the filters.
        nms_cfg (Dict, optional): mmcv ``batched_nms`` config; None returns the valid
            candidates in their order, without NMS or ``max_per_img`` (mmdet's
            ``with_nms=False``; one host read).
        max_per_img (int, optional): detections kept per image after NMS (None: all).

    Returns:
        InstanceList: per image ``bboxes`` ``(N, 4)``, ``scores`` ``(N,)`` (descending after
        NMS), ``labels`` ``(N,)``.
    """
    if nms_cfg is not None and not batched_nms_supports(nms_cfg):
        return _mmcv_nms_by_image(bboxes, scores, labels, valid, nms_cfg, max_per_img)
    if nms_cfg is None:
        counts = valid.sum(1).tolist()  # the host read
        # the valid candidates first, image after image, each in its order
        keep = (~valid).flatten().to(torch.uint8).argsort(stable=True)[:sum(counts)]
    else:
        keep, counts = batched_nms_padded(bboxes, scores, labels, valid, nms_cfg, max_per_img)
    found = InstanceData(bboxes=bboxes.flatten(0, 1)[keep], scores=scores.flatten()[keep],
                         labels=labels.flatten()[keep])
    return [found[end - n:end] for n, end in zip(counts, accumulate(counts))]


def _mmcv_nms_by_image(bboxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor,
                       nms_cfg: Dict, max_per_img: Optional[int]) -> InstanceList:
    """mmcv's ``batched_nms`` image by image (the NMS variants ``batched_nms_padded`` does not
    implement, e.g. ``soft_nms``, which may rescore); arguments as :func:`detections_by_image`.
    """
    results = []
    for img_boxes, img_scores, img_labels, img_valid in zip(bboxes, scores, labels, valid):
        res = InstanceData(bboxes=img_boxes[img_valid], scores=img_scores[img_valid],
                           labels=img_labels[img_valid])
        if res.bboxes.numel() > 0:
            dets, nms_keep = batched_nms(res.bboxes, res.scores, res.labels, nms_cfg)
            res = res[nms_keep]
            res.scores = dets[:, -1]
            res = res[:max_per_img]
        results.append(res)
    return results
