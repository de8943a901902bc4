"""Which anchors take part in a batch's assignment, and the call to the head's assigner.

Any mmdet assigner works. One that has ``assign_batch`` (``RetinaIoUAssigner``) is called once
for the whole padded batch, with keyword arguments only::

    assign_batch(priors=(A, 4), gt_bboxes=(B, G, 4), gt_labels=(B, G), gt_valid=(B, G),
                 prior_valid=(B, A), gt_bboxes_ignore=(B, Gi, 4) or None,
                 ignore_valid=(B, Gi) or None)

and must return an object with ``gt_inds`` and ``labels``, both ``(B, A)`` long, equal per image
to mmdet's ``assign`` on that image's valid gts and valid anchors (``prior_valid`` False:
``gt_inds = -1``). Any other assigner is called image by image through mmdet's ``assign``.
"""
from __future__ import annotations

from typing import Optional, Tuple

from mmengine.structures import InstanceData
from torch import Tensor

from ..task_modules.assigners.per_image import assign_per_image
from .retina_gts import GtBatch


def inside_border(anchors: Tensor, valid: Tensor, img_hw: Tensor,
                  allowed_border: float) -> Tensor:
    """mmdet's ``anchor_inside_flags`` for a batch: with ``allowed_border >= 0``, anchors must
    lie inside the image grown by ``allowed_border`` pixels.

    Args:
        anchors (Tensor): ``(A, 4)`` x1y1x2y2.
        valid (Tensor): ``(B, A)`` bool, False on each image's padding.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)`` (see :func:`~.retina_gts.image_hw`).
        allowed_border (float): pixels an anchor may cross the border by; < 0 keeps all.

    Returns:
        Tensor: ``(B, A)`` bool, ``valid`` and inside the border.
    """
    if allowed_border < 0:
        return valid
    return valid & (anchors[None, :, :2] >= -allowed_border).all(-1) \
        & (anchors[None, :, 2] < img_hw[:, 1:2] + allowed_border) \
        & (anchors[None, :, 3] < img_hw[:, 0:1] + allowed_border)


def assign_anchors(assigner: object, anchors: Tensor, valid: Tensor, gts: GtBatch,
                   gt_usable: Tensor) -> Tuple[Tensor, Tensor]:
    """Assigns every anchor of every image: in one ``assign_batch`` call when the assigner has
    it (see the module's docstring), else image by image through mmdet's ``assign``.

    Args:
        assigner (object): any mmdet assigner.
        anchors (Tensor): ``(A, 4)``.
        valid (Tensor): ``(B, A)`` bool, anchors taking part in the assignment.
        gts (GtBatch): the padded gts (``bboxes`` as cleaned by
            :func:`~.retina_gts.check_gts`).
        gt_usable (Tensor): ``(B, G)`` bool, the gts to assign (padding and left-out gts False).

    Returns:
        Tuple[Tensor, Tensor]: ``gt_inds`` ``(B, A)`` (0 negative, -1 ignored or invalid,
        ``k > 0`` means gt ``k - 1`` of ``gts.bboxes``) and ``labels`` ``(B, A)`` (class of the
        assigned gt, -1 where not positive).
    """
    if hasattr(assigner, 'assign_batch'):
        res = assigner.assign_batch(
            priors=anchors, gt_bboxes=gts.bboxes, gt_labels=gts.labels, gt_valid=gt_usable,
            prior_valid=valid, gt_bboxes_ignore=gts.ignore_bboxes,
            ignore_valid=gts.ignore_valid)
        return res.gt_inds, res.labels
    # Per image, on the valid anchors only like mmdet. mmdet's assigners take data-dependent
    # shapes, so this path syncs anyway.
    def assign_image(priors: Tensor, boxes: Tensor, labels: Tensor,
                     ignore: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        res = assigner.assign(InstanceData(priors=priors),
                              InstanceData(bboxes=boxes, labels=labels),
                              None if ignore is None else InstanceData(bboxes=ignore))
        overlaps = res.max_overlaps  # None from some (PointAssigner); unused here
        if overlaps is None:
            overlaps = priors.new_zeros(len(res.gt_inds))
        return res.gt_inds, overlaps, res.labels

    res = assign_per_image(assign_image, anchors, gts.bboxes, gts.labels, gt_usable, valid,
                           gts.ignore_bboxes, gts.ignore_valid)
    return res.gt_inds, res.labels
