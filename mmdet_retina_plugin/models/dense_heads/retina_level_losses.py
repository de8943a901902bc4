"""How :class:`~.RetinaNetHead` calls its configured losses on the whole batch, per level.

Losses come per level, as mmdet's ``AnchorHead`` returns them. A loss with a ``segments``
argument (``RetinaFocalLoss``) gives them from one call; other losses whose value is a sum over
anchors (``FocalLoss``, ``CrossEntropyLoss``, ``L1Loss``, ``SmoothL1Loss``, the IoU losses, ...:
:data:`BATCHED_LOSSES`) are called once for the whole batch without reduction and summed per
level (which also skips mmdet's ``torch.any(weight > 0)`` host sync in the box losses); any
other loss (e.g. ``GHMC`` / ``GHMR``, which weigh by statistics of the tensor they get) is
called level by level on all anchors of the level, as mmdet calls it, with whatever host syncs
it makes (mmdet's ``FocalLoss`` and ``CrossEntropyLoss`` make some of their own, in ``one_hot``
and label expansion).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmdet.models import losses as mmdet_losses
from torch import Tensor

from ..losses import RetinaFocalLoss, RetinaHardNegativeCELoss
from ..losses.focal_eager import AVG_EPS
from .retina_box_coding import decode_boxes, encode_boxes
from .retina_loss_reduction import level_sums
from .retina_targets import BatchTargets, assigned_boxes

#: Losses whose value is a sum over anchors (positives for box losses) divided by
#: ``avg_factor``: one call over the batch with ``reduction_override='none'``, summed per level,
#: equals mmdet's per-level calls. ``RetinaHardNegativeCELoss`` mines its negatives among all
#: anchors of one call by design.
BATCHED_LOSSES = frozenset((
    RetinaFocalLoss, RetinaHardNegativeCELoss, mmdet_losses.FocalLoss,
    mmdet_losses.CrossEntropyLoss, mmdet_losses.L1Loss, mmdet_losses.SmoothL1Loss,
    mmdet_losses.BalancedL1Loss, mmdet_losses.MSELoss, mmdet_losses.IoULoss,
    mmdet_losses.GIoULoss, mmdet_losses.DIoULoss, mmdet_losses.CIoULoss, mmdet_losses.EIoULoss,
    mmdet_losses.SIoULoss, mmdet_losses.BoundedIoULoss))


def flatten_levels(maps: Sequence[Tensor], channels: int) -> Tensor:
    """``[(B, A*C, Hi, Wi)]`` -> ``(B, sum(Hi*Wi*A), C)``, in the anchors' order."""
    batch = maps[0].size(0)
    return torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, channels) for m in maps], 1)


def cls_level_losses(loss_cls: nn.Module, flat_cls: Tensor, targets: BatchTargets,
                     level_sizes: List[int], avg_factor: Tensor, segments: bool,
                     batched: bool) -> Tensor:
    """``loss_cls`` of each level.

    Args:
        loss_cls (nn.Module): the classification loss.
        flat_cls (Tensor): ``(B, S, K)`` logits, levels in order.
        targets (BatchTargets): the batch's targets.
        level_sizes (List[int]): anchors per level, summing to ``S``.
        avg_factor (Tensor): the normaliser.
        segments (bool): the loss takes ``segments`` (per-level sums of one fused pass).
        batched (bool): the loss is in :data:`BATCHED_LOSSES`.

    Returns:
        Tensor: ``(L,)``.
    """
    args = (flat_cls, targets.labels, targets.label_weights)
    if segments:
        return loss_cls(*(t.flatten(0, 1) for t in args), avg_factor=avg_factor,
                        segments=level_sizes)
    if batched:
        loss = loss_cls(*(t.flatten(0, 1) for t in args), reduction_override='none')
        return level_sums(loss.reshape(flat_cls.shape), level_sizes) / (avg_factor + AVG_EPS)
    return torch.stack([
        loss_cls(*(t.flatten(0, 1) for t in level), avg_factor=avg_factor)
        for level in zip(*(t.split(level_sizes, 1) for t in args))])


def box_regression_pair(bbox_coder: object, flat_box: Tensor, anchors: Tensor,
                        targets: BatchTargets, reg_decoded_bbox: bool) -> Tuple[Tensor, Tensor]:
    """What ``loss_bbox`` compares: predicted vs target deltas, or with ``reg_decoded_bbox``
    decoded vs gt boxes.

    Args:
        bbox_coder (object): the head's box coder.
        flat_box (Tensor): ``(B, S, D)`` predicted deltas, levels in order.
        anchors (Tensor): ``(S, 4)``.
        targets (BatchTargets): the batch's targets.
        reg_decoded_bbox (bool): compare boxes instead of deltas.

    Returns:
        Tuple[Tensor, Tensor]: prediction and target, ``(B, S, D)`` (boxes: ``(B, S, 4)``).
    """
    all_anchors = anchors.expand(flat_box.size(0), -1, -1)
    gt_boxes = assigned_boxes(targets, all_anchors)
    if reg_decoded_bbox:
        return decode_boxes(bbox_coder, all_anchors, flat_box), gt_boxes
    return flat_box, encode_boxes(bbox_coder, all_anchors.reshape(-1, anchors.size(-1)),
                                  gt_boxes.reshape(-1, 4)).view_as(flat_box)


def box_level_losses(loss_bbox: nn.Module, pred: Tensor, target: Tensor, pos: Tensor,
                     level_sizes: List[int], avg_factor: Tensor, batched: bool) -> Tensor:
    """``loss_bbox`` of each level, computed densely over every anchor with weight 1 on
    positives and 0 elsewhere (mmdet's ``AnchorHead.loss_by_feat_single``), so that no
    positive needs gathering.

    Args:
        loss_bbox (nn.Module): the box loss.
        pred (Tensor): ``(B, S, D)`` predictions (deltas, or boxes for decoded-box losses),
            levels in order.
        target (Tensor): ``(B, S, D)`` their targets (anything finite off the positives).
        pos (Tensor): ``(B, S)`` bool, positive anchors.
        level_sizes (List[int]): anchors per level, summing to ``S``.
        avg_factor (Tensor): the normaliser.
        batched (bool): the loss is in :data:`BATCHED_LOSSES`.

    Returns:
        Tensor: ``(L,)``.
    """
    if batched:
        loss = loss_bbox(pred.flatten(0, 1), target.flatten(0, 1),
                         reduction_override='none').reshape(pos.shape + (-1,))
        # a product, as mmdet weighs: a non-finite prediction poisons the loss alike
        return level_sums(loss * pos[..., None].to(loss.dtype), level_sizes) / \
            (avg_factor + AVG_EPS)
    weight = pos[..., None].expand_as(target).to(target.dtype)
    return torch.stack([
        loss_bbox(*(t.flatten(0, 1) for t in level), avg_factor=avg_factor)
        for level in zip(*(t.split(level_sizes, 1) for t in (pred, target, weight)))])
