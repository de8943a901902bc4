"""Training targets of a whole batch for an anchor head: labels and weights from the
assignment, the loss normaliser, and each anchor's assigned gt box (its regression target
is :func:`~.retina_box_coding.encode_boxes` of it).

Everything works on ``(B, A)`` tensors over the anchors of all levels (``A = sum(Hi*Wi*Ab)``,
``Ab`` base anchors per location), with per-image gts padded to ``(B, G, 4)``
(:mod:`.retina_gts`). The semantics are mmdet's ``AnchorHead.get_targets`` with
``PseudoSampler`` (every valid anchor is a sample). Nothing here makes the host wait for the
device (no ``nonzero``, ``item``, boolean indexing or blocking copies) except mmdet assigners
without ``assign_batch`` (:mod:`.retina_assignment`): every shape follows from the anchors' and
the largest gt count. ``RetinaNetHead`` builds its losses on these.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .retina_assignment import assign_anchors, inside_border
from .retina_gts import GtBatch, check_gts


class BatchTargets(NamedTuple):
    """Training targets of a batch (``A = sum(Hi*Wi*Ab)`` anchors per image).

    Attributes:
        labels (Tensor): ``(B, A)`` long: class in ``[0, K)`` for positives, ``K``
            (background) else.
        label_weights (Tensor): ``(B, A)`` float: 0 for ignored / invalid anchors,
            ``pos_weight`` (1 by default) for positives, 1 for negatives.
        gt_inds (Tensor): ``(B, A)`` long: 0 negative, -1 ignored or invalid, ``k > 0`` means
            gt ``k - 1`` of ``gt_bboxes``.
        gt_bboxes (Tensor): ``(B, G, 4)`` gt boxes padded to the largest gt count ``G``.
        avg_factor (Tensor): scalar float, sum over images of ``max(num_pos_i, 1)`` (mmdet's
            ``PseudoSampler`` normaliser).
        anchor_valid (Tensor): ``(B, A)`` bool, anchors that took part in the assignment
            (inside the image's padding and, with ``allowed_border >= 0``, its border).
        bad_gts (Tensor): ``(2, B)`` long, on the device: per image the gts left out of the
            assignment for a NaN / infinite coordinate (row 0) or for width or height <= 0
            (row 1); see :func:`~.retina_gts.check_gts` and
            :class:`~.retina_gt_reporter.GtReporter`.
    """

    labels: Tensor
    label_weights: Tensor
    gt_inds: Tensor
    gt_bboxes: Tensor
    avg_factor: Tensor
    anchor_valid: Tensor
    bad_gts: Tensor


def batch_targets(assigner: object, anchors: Tensor, valid: Tensor, gts: GtBatch,
                  num_classes: int, allowed_border: float = -1, pos_weight: float = -1,
                  clip_border: bool = True) -> BatchTargets:
    """Classification targets of a whole batch (mmdet ``AnchorHead.get_targets`` with
    ``PseudoSampler``), leaving out unusable gts (see :func:`~.retina_gts.check_gts`).

    Without host syncs when ``assigner`` assigns the batch without them (``RetinaIoUAssigner``
    in its default modes): every shape follows from the anchors' and the padded gts'.

    Args:
        assigner (object): any mmdet assigner (batched through ``assign_batch`` when it has
            it, see :func:`~.retina_assignment.assign_anchors`).
        anchors (Tensor): ``(A, 4)`` anchors of all levels (shared by the batch).
        valid (Tensor): ``(B, A)`` bool, False on each image's padding.
        gts (GtBatch): the padded gts, from :func:`~.retina_gts.pad_gts`.
        num_classes (int): ``K``; label ``K`` is background.
        allowed_border (float): see :func:`~.retina_assignment.inside_border`
            (``train_cfg.allowed_border``).
        pos_weight (float): classification weight of positives; <= 0 means 1.
        clip_border (bool): gts are measured clipped to the image (the box coder's
            ``clip_border``).

    Returns:
        BatchTargets: labels, weights, assignment and normaliser of the batch.
    """
    valid = inside_border(anchors, valid, gts.img_hw, allowed_border)
    gt_bboxes, usable, bad_gts = check_gts(gts.bboxes, gts.valid, gts.img_hw, clip_border)
    gt_inds, assigned = assign_anchors(assigner, anchors, valid, gts._replace(bboxes=gt_bboxes),
                                       usable)
    pos = valid & (gt_inds > 0)
    labels = torch.where(pos, assigned, num_classes)
    label_weights = (valid & (gt_inds >= 0)).to(anchors.dtype)
    if pos_weight > 0:
        label_weights = torch.where(pos, pos_weight, label_weights)
    avg_factor = pos.sum(1).clamp(min=1).sum().to(anchors.dtype)
    return BatchTargets(labels, label_weights, torch.where(valid, gt_inds, -1), gt_bboxes,
                        avg_factor, valid, bad_gts)


def assigned_boxes(targets: BatchTargets, anchors: Tensor) -> Tensor:
    """Each anchor's assigned gt box; the anchor itself where it is not positive, so that its
    encoded target is finite (``log(1) = 0``) though unused.

    Args:
        targets (BatchTargets): the batch's targets.
        anchors (Tensor): ``(A, 4)`` or ``(B, A, 4)`` x1y1x2y2 anchors.

    Returns:
        Tensor: ``(B, A, 4)`` x1y1x2y2.
    """
    pos = targets.gt_inds[..., None] > 0
    anchors = anchors.expand(pos.shape[:2] + (4,))
    if targets.gt_bboxes.size(1) == 0:  # no gts in the batch
        return anchors
    index = (targets.gt_inds - 1).clamp(min=0)[..., None].expand(-1, -1, 4)
    return torch.where(pos, targets.gt_bboxes.gather(1, index), anchors)
