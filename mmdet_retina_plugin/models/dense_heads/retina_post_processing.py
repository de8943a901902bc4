"""Post-processing of an anchor head's outputs for a whole batch, as small functions on tensors.

The steps of mmdet's ``BaseDenseHead.predict_by_feat`` (and detectron2's
``_decode_per_level_predictions``), each usable alone, e.g. by an exporter:

1. :func:`select_level_topk`: per level and image, the ``nms_pre`` best (anchor, class) pairs
   whose score passes ``score_thr``, read on the logits in their native ``(B, Ab*K, H, W)``
   layout (no permute copy, no sigmoid over every pair);
2. :func:`gather_level`: the deltas and anchors of the selected pairs;
3. :func:`decode_boxes`, :func:`clip_boxes`, :func:`rescale_boxes`, :func:`min_size_mask`;
4. :func:`nms_per_image`: one class-wise NMS over the whole batch where
   ``models/layers/batched_nms.py`` implements the config, mmcv's image by image otherwise.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from mmcv.ops import batched_nms
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..layers.batched_nms import batched_nms_batch
from ..layers.batched_nms import supports as batched_nms_supports


class LevelSelection(NamedTuple):
    """The pairs :func:`select_level_topk` kept on one level.

    Attributes:
        scores (Tensor): ``(B, k)`` sigmoid scores, descending per image; padding (images with
            fewer than ``k`` candidates) has score 0.
        labels (Tensor): ``(B, k)`` long classes in ``[0, K)``.
        base (Tensor): ``(B, k)`` long base anchor in ``[0, Ab)``.
        pixel (Tensor): ``(B, k)`` long location ``y * W + x``.
    """

    scores: Tensor
    labels: Tensor
    base: Tensor
    pixel: Tensor


def logit_floor(score_thr: float) -> float:
    """A logit below which no sigmoid score exceeds ``score_thr`` (with a small margin, so the
    exact ``sigmoid > score_thr`` test still decides on the survivors)."""
    if score_thr <= 0:
        return -math.inf
    if score_thr >= 1:
        return math.inf
    return math.log(score_thr / (1 - score_thr)) - 1e-3


def topk_above(logits: Tensor, floor: float, k: int) -> Tuple[Tensor, Tensor]:
    """Per row, the ``k`` largest entries above ``floor`` (all of them if ``k <= 0``).

    Selecting candidates first keeps ``topk`` off the millions of background entries. Row by
    row (a batch has few images): a row's ``nonzero`` gives its column indices directly, with no
    scatter of the candidates into a padded ``(B, N)`` table.

    Args:
        logits (Tensor): ``(B, N)``.
        floor (float): entries ``<= floor`` are never selected.
        k (int): how many per row; <= 0 for all above ``floor``.

    Returns:
        Tuple[Tensor, Tensor]: ``values`` ``(B, k')`` sorted descending and their column indices
        ``(B, k')``; rows with fewer than ``k'`` candidates are padded with ``-inf`` (index 0).
    """
    picked = []
    for row in logits:
        cols = (row > floor).nonzero().squeeze(1)
        values = row[cols]
        values, order = values.topk(k) if 0 < k < values.numel() else \
            values.sort(descending=True)
        picked.append((values, cols[order]))
    width = max((v.numel() for v, _ in picked), default=0)
    values = logits.new_full((logits.size(0), width), -math.inf)
    cols = torch.zeros((logits.size(0), width), dtype=torch.long, device=logits.device)
    for i, (row_values, row_cols) in enumerate(picked):
        values[i, :row_values.numel()] = row_values
        cols[i, :row_cols.numel()] = row_cols
    return values, cols


def select_level_topk(cls_score: Tensor, num_classes: int, floor: float,
                      nms_pre: int) -> LevelSelection:
    """The best (anchor, class) pairs of one level for each image.

    Args:
        cls_score (Tensor): ``(B, Ab*K, H, W)`` logits; channel ``a*K + k`` is class ``k`` of
            base anchor ``a``. Read in its memory order, NCHW or channels-last, without a copy.
        num_classes (int): ``K``.
        floor (float): :func:`logit_floor` of ``score_thr``.
        nms_pre (int): pairs kept per image (<= 0: all above ``floor``).

    Returns:
        LevelSelection: scores, classes and positions of the kept pairs.
    """
    batch, channels, height, width = cls_score.shape
    logits = cls_score.detach()
    if not logits.is_contiguous() and logits.is_contiguous(memory_format=torch.channels_last):
        # flat index into (H*W, Ab*K): pixel * Ab*K + a*K + k (mmdet's own order)
        top_logits, flat = topk_above(logits.permute(0, 2, 3, 1).reshape(batch, -1), floor,
                                      nms_pre)
        channel, pixel = flat % channels, flat // channels
    else:
        # flat index into (Ab*K, H*W): (a*K + k) * H*W + pixel
        top_logits, flat = topk_above(logits.reshape(batch, -1), floor, nms_pre)
        channel, pixel = flat // (height * width), flat % (height * width)
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


def decode_boxes(bbox_coder: object, anchors: Tensor, deltas: Tensor) -> Tensor:
    """Decodes ``(B, M, D)`` deltas on ``(B, M, 4)`` anchors into ``(B, M, 4)`` x1y1x2y2 boxes
    with ``bbox_coder.decode`` (no clipping: see :func:`clip_boxes`)."""
    boxes = get_box_tensor(bbox_coder.decode(anchors.reshape(-1, anchors.size(-1)),
                                             deltas.reshape(-1, deltas.size(-1))))
    return boxes.reshape(anchors.size(0), -1, 4)


def clip_boxes(bboxes: Tensor, img_hw: Tensor) -> Tensor:
    """Clips ``(B, M, 4)`` x1y1x2y2 boxes to ``[0, w] x [0, h]`` of each image.

    Args:
        bboxes (Tensor): ``(B, M, 4)``.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)``.
    """
    return bboxes.clamp(min=bboxes.new_zeros(1), max=img_hw[:, None, [1, 0, 1, 0]])


def rescale_boxes(bboxes: Tensor, scale_factors: Tensor) -> Tensor:
    """Maps ``(B, M, 4)`` boxes back to the original images, dividing by each image's
    ``(B, 2)`` ``scale_factor`` ``(w_scale, h_scale)`` (mmdet's ``img_meta['scale_factor']``)."""
    return bboxes * (1 / scale_factors).repeat(1, 2)[:, None]


def min_size_mask(bboxes: Tensor, min_size: float) -> Tensor:
    """``(B, M)`` bool: width and height both above ``min_size`` (mmdet's ``min_bbox_size``)."""
    return (bboxes[..., 2] - bboxes[..., 0] > min_size) \
        & (bboxes[..., 3] - bboxes[..., 1] > min_size)


def nms_per_image(bboxes: Tensor, scores: Tensor, labels: Tensor, keep: Tensor,
                  nms_cfg: Optional[Dict] = None,
                  max_per_img: Optional[int] = None) -> InstanceList:
    """Class-wise NMS and ``max_per_img`` of each image's kept candidates.

    Args:
        bboxes (Tensor): ``(B, M, 4)``.
        scores (Tensor): ``(B, M)``.
        labels (Tensor): ``(B, M)``.
        keep (Tensor): ``(B, M)`` bool, candidates that passed the filters.
        nms_cfg (Dict, optional): mmcv ``batched_nms`` config; None returns the kept
            candidates without NMS or ``max_per_img`` (mmdet's ``with_nms=False``).
        max_per_img (int, optional): detections kept per image after NMS (None: all).

    Returns:
        InstanceList: per image ``bboxes`` ``(N, 4)``, ``scores`` ``(N,)`` (descending after
        NMS), ``labels`` ``(N,)``.
    """
    num_imgs = scores.size(0)
    if nms_cfg is not None and batched_nms_supports(nms_cfg):
        img_ids = torch.arange(num_imgs, device=keep.device)[:, None].expand_as(keep)[keep]
        cand = InstanceData(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep])
        return [cand[k] for k in batched_nms_batch(cand.bboxes, cand.scores, cand.labels,
                                                   img_ids, num_imgs, nms_cfg, max_per_img)]
    results = []
    for i in range(num_imgs):
        res = InstanceData(bboxes=bboxes[i][keep[i]], scores=scores[i][keep[i]],
                           labels=labels[i][keep[i]])
        if nms_cfg is not None and res.bboxes.numel() > 0:
            # NMS variants batched_nms_batch does not implement (e.g. soft_nms): mmcv's
            dets, nms_keep = batched_nms(res.bboxes, res.scores, res.labels, nms_cfg)
            res = res[nms_keep]
            res.scores = dets[:, -1]
            res = res[:max_per_img]
        results.append(res)
    return results
