"""Training targets of a whole batch for an anchor head: border filter, gt checks, assignment,
labels / weights, and the loss normaliser with its optional moving average.

Everything works on ``(B, A)`` tensors over the anchors of all levels (``A = sum(Hi*Wi*Ab)``,
``Ab`` base anchors per location), with per-image gts padded to ``(B, G, 4)``. The semantics are
mmdet's ``AnchorHead.get_targets`` with ``PseudoSampler`` (every valid anchor is a sample).
``RetinaNetHead`` builds its losses on these, and ``RetinaAssignStatsHook`` counts them.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional, Protocol, Sequence, Tuple

import torch
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import InstanceList, OptInstanceList
from mmengine.structures import InstanceData
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


class BatchAssignment(Protocol):
    """What :meth:`BatchAssigner.assign_batch` returns (e.g. ``RetinaIoUAssigner``'s result).

    Attributes:
        gt_inds (Tensor): ``(B, A)`` long: 0 negative, -1 ignored or invalid, ``k > 0`` means
            gt ``k - 1`` of the image's padded gts.
        labels (Tensor): ``(B, A)`` long: class of the assigned gt, -1 where not positive.
    """

    gt_inds: Tensor
    labels: Tensor


class BatchAssigner(Protocol):
    """An assigner that matches the anchors of a whole padded batch in one call.

    :func:`assign_anchors` calls ``assign_batch`` with keyword arguments only; an assigner
    without it is called image by image through mmdet's ``assign``.
    """

    def assign_batch(self, *, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                     gt_valid: Tensor, prior_valid: Optional[Tensor] = None,
                     gt_bboxes_ignore: Optional[Tensor] = None,
                     ignore_valid: Optional[Tensor] = None) -> BatchAssignment:
        """Assigns shared anchors to each image's gts; per image equal to mmdet's ``assign``
        on that image's valid gts and valid anchors.

        Args:
            priors (Tensor): ``(A, 4)`` x1y1x2y2 anchors shared by all images.
            gt_bboxes (Tensor): ``(B, G, 4)`` x1y1x2y2 gt boxes, zero-padded.
            gt_labels (Tensor): ``(B, G)`` long classes in ``[0, K)`` (padding unused).
            gt_valid (Tensor): ``(B, G)`` bool, False for padding and for gts to leave out.
            prior_valid (Tensor, optional): ``(B, A)`` bool, False for anchors that take no
                part (outside the padding or border): they get ``gt_inds = -1``.
            gt_bboxes_ignore (Tensor, optional): ``(B, Gi, 4)`` ignore regions, zero-padded.
            ignore_valid (Tensor, optional): ``(B, Gi)`` bool, False for padding.

        Returns:
            BatchAssignment: ``(B, A)`` ``gt_inds`` and ``labels``.
        """
        ...


class GtReport(NamedTuple):
    """Per-image counts of gt boxes that :func:`check_gts` left out, on the host.

    The counts are copied from the device without waiting (``non_blocking``); read them with
    :func:`report_bad_gts` only after something has synchronised with the device (the head
    reads them after ``nonzero`` over the positive anchors, which waits anyway).

    Attributes:
        non_finite (Tensor): ``(B,)`` long, gts with a NaN or infinite coordinate.
        degenerate (Tensor): ``(B,)`` long, finite gts of width or height <= 0 (after clipping
            to the image where the box coder clips).
    """

    non_finite: Tensor
    degenerate: Tensor


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
        gt_report (GtReport): gts left out of the assignment, per image.
    """

    labels: Tensor
    label_weights: Tensor
    gt_inds: Tensor
    gt_bboxes: Tensor
    avg_factor: Tensor
    anchor_valid: Tensor
    gt_report: GtReport


def pad_images(items: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Pads per-image ``[(Gi, ...)]`` with zeros.

    Args:
        items (Sequence[Tensor]): one tensor per image, ``(Gi, ...)``, on one device.

    Returns:
        Tuple[Tensor, Tensor]: ``(B, G, ...)`` padded values and the ``(B, G)`` bool mask of
        real entries, ``G = max(Gi)``.
    """
    device = items[0].device
    counts = torch.tensor([t.size(0) for t in items], device=device)
    padded = pad_sequence(list(items), batch_first=True)
    valid = torch.arange(padded.size(1), device=device) < counts[:, None]
    return padded, valid


def image_hw(batch_img_metas: Sequence[dict], like: Tensor) -> Tensor:
    """``(B, 2)`` ``(h, w)`` of each image's ``img_shape``, with ``like``'s dtype and device."""
    return like.new_tensor([m['img_shape'][:2] for m in batch_img_metas])


def inside_border(anchors: Tensor, valid: Tensor, img_hw: Tensor,
                  allowed_border: float) -> Tensor:
    """mmdet's ``anchor_inside_flags`` for a batch: with ``allowed_border >= 0``, anchors must
    lie inside the image grown by ``allowed_border`` pixels.

    Args:
        anchors (Tensor): ``(A, 4)`` x1y1x2y2.
        valid (Tensor): ``(B, A)`` bool, False on each image's padding.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)`` (see :func:`image_hw`).
        allowed_border (float): pixels an anchor may cross the border by; < 0 keeps all.

    Returns:
        Tensor: ``(B, A)`` bool, ``valid`` and inside the border.
    """
    if allowed_border < 0:
        return valid
    return valid & (anchors[None, :, :2] >= -allowed_border).all(-1) \
        & (anchors[None, :, 2] < img_hw[:, 1:2] + allowed_border) \
        & (anchors[None, :, 3] < img_hw[:, 0:1] + allowed_border)


def check_gts(gt_bboxes: Tensor, gt_valid: Tensor, img_hw: Tensor,
              clip_border: bool) -> Tuple[Tensor, Tensor, GtReport]:
    """Finds gt boxes that no anchor may learn from, on the device (no host sync).

    A zero-width box has IoU 0 with every anchor, and an assigner with ``min_pos_iou=0`` then
    makes every anchor a positive for it; its encoded target is ``log(0) = -inf``. Such boxes
    (width or height <= 0, measured after clipping to the image when ``clip_border`` is set, so
    a box entirely outside the image counts too) and non-finite boxes are left out.

    Args:
        gt_bboxes (Tensor): ``(B, G, 4)`` x1y1x2y2, zero-padded.
        gt_valid (Tensor): ``(B, G)`` bool, False for padding.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)``.
        clip_border (bool): measure the boxes clipped to ``[0, w] x [0, h]``.

    Returns:
        Tuple[Tensor, Tensor, GtReport]: ``gt_bboxes`` with non-finite boxes zeroed (so no NaN
        reaches the assigner), the ``(B, G)`` mask of usable gts, and the per-image counts of
        what was left out.
    """
    finite = gt_bboxes.isfinite().all(-1)
    boxes = torch.where(finite[..., None], gt_bboxes, 0.0)
    if clip_border:
        hi = img_hw[:, None, [1, 0, 1, 0]]
        boxes_seen = torch.minimum(boxes.clamp(min=0), hi)
    else:
        boxes_seen = boxes
    positive = (boxes_seen[..., 2:] > boxes_seen[..., :2]).all(-1)
    usable = gt_valid & finite & positive
    counts = torch.stack([(gt_valid & ~finite).sum(1), (gt_valid & finite & ~positive).sum(1)])
    counts = counts.to('cpu', non_blocking=True)
    return boxes, usable, GtReport(counts[0], counts[1])


def report_bad_gts(report: GtReport, batch_img_metas: Sequence[dict]) -> None:
    """Raises for non-finite gts and warns once per image about degenerate ones.

    Args:
        report (GtReport): from :func:`check_gts`; read only after a device synchronisation.
        batch_img_metas (Sequence[dict]): per-image metas; ``img_id`` / ``img_path`` name the
            image when present.

    Raises:
        ValueError: some gt box has a NaN or infinite coordinate.
    """
    def name(i: int) -> str:
        meta = batch_img_metas[i]
        return f"img_id={meta.get('img_id')!r} img_path={meta.get('img_path')!r}"

    non_finite = report.non_finite.tolist()
    if any(non_finite):
        raise ValueError('gt bboxes must be finite; NaN or inf in ' + '; '.join(
            f'{n} box(es) of image {i} ({name(i)})' for i, n in enumerate(non_finite) if n))
    for i, n in enumerate(report.degenerate.tolist()):
        if n:
            warnings.warn(f'{n} gt box(es) of image {i} ({name(i)}) have width or height <= 0 '
                          '(inside the image) and are ignored: no positive anchors, no box loss',
                          stacklevel=2)


def assign_anchors(assigner: object, anchors: Tensor, valid: Tensor, gt_bboxes: Tensor,
                   gt_valid: Tensor, batch_gt_instances: InstanceList,
                   batch_gt_instances_ignore: OptInstanceList = None) -> Tuple[Tensor, Tensor]:
    """Assigns every anchor of every image, in one call when ``assigner`` is a
    :class:`BatchAssigner`, else image by image through mmdet's ``assign``.

    Args:
        assigner (object): a :class:`BatchAssigner` or any mmdet assigner.
        anchors (Tensor): ``(A, 4)``.
        valid (Tensor): ``(B, A)`` bool, anchors taking part in the assignment.
        gt_bboxes (Tensor): ``(B, G, 4)`` padded gt boxes.
        gt_valid (Tensor): ``(B, G)`` bool, the gts to assign (padding and left-out gts False).
        batch_gt_instances (InstanceList): per image ``labels`` ``(Gi,)`` (and ``bboxes``).
        batch_gt_instances_ignore (OptInstanceList): per image ignored ``bboxes`` or None.

    Returns:
        Tuple[Tensor, Tensor]: ``gt_inds`` ``(B, A)`` (0 negative, -1 ignored or invalid,
        ``k > 0`` means gt ``k - 1`` of ``gt_bboxes``) and ``labels`` ``(B, A)`` (class of the
        assigned gt, -1 where not positive).
    """
    ignores = batch_gt_instances_ignore or [None] * len(batch_gt_instances)
    if hasattr(assigner, 'assign_batch'):
        gt_labels, _ = pad_images([g.labels.to(anchors.device) for g in batch_gt_instances])
        ignore_bboxes = ignore_valid = None
        if any(ig is not None for ig in ignores):
            ignore_bboxes, ignore_valid = pad_images(
                [get_box_tensor(ig.bboxes).to(anchors) if ig is not None
                 else anchors.new_zeros(0, 4) for ig in ignores])
        res = assigner.assign_batch(
            priors=anchors, gt_bboxes=gt_bboxes, gt_labels=gt_labels, gt_valid=gt_valid,
            prior_valid=valid, gt_bboxes_ignore=ignore_bboxes, ignore_valid=ignore_valid)
        return res.gt_inds, res.labels
    # Per image, on the valid anchors only like mmdet, scattered back to all anchors. This path
    # syncs anyway, so it may ask whether any gt was left out.
    gt_inds = valid.new_full(valid.shape, -1, dtype=torch.long)
    labels = valid.new_full(valid.shape, -1, dtype=torch.long)
    for i, (gt, ignore) in enumerate(zip(batch_gt_instances, ignores)):
        kept = gt_valid[i, :len(gt)].nonzero().squeeze(1)
        gt_i = InstanceData(bboxes=gt_bboxes[i, kept], labels=gt.labels[kept])
        res = assigner.assign(InstanceData(priors=anchors[valid[i]]), gt_i, ignore)
        # back to indices of the image's padded gts: lookup[k] = kept[k - 1] + 1, lookup[0] = 0
        lookup = torch.cat([kept.new_zeros(1), kept + 1])
        gt_inds[i, valid[i]] = torch.where(res.gt_inds > 0, lookup[res.gt_inds.clamp(min=0)],
                                           res.gt_inds)
        labels[i, valid[i]] = res.labels
    return gt_inds, labels


def anchor_targets(assigner: object, anchors: Tensor, valid: Tensor,
                   batch_gt_instances: InstanceList, batch_img_metas: Sequence[dict],
                   num_classes: int, batch_gt_instances_ignore: OptInstanceList = None,
                   allowed_border: float = -1, pos_weight: float = -1,
                   clip_border: bool = True) -> BatchTargets:
    """Classification targets of a whole batch (mmdet ``AnchorHead.get_targets`` with
    ``PseudoSampler``), leaving out unusable gts (see :func:`check_gts`).

    Args:
        assigner (object): a :class:`BatchAssigner` or any mmdet assigner.
        anchors (Tensor): ``(A, 4)`` anchors of all levels (shared by the batch).
        valid (Tensor): ``(B, A)`` bool, False on each image's padding.
        batch_gt_instances (InstanceList): per image ``bboxes`` ``(Gi, 4)`` and ``labels``
            ``(Gi,)`` in ``[0, K)``.
        batch_img_metas (Sequence[dict]): per image meta with ``img_shape``.
        num_classes (int): ``K``; label ``K`` is background.
        batch_gt_instances_ignore (OptInstanceList): per image ignored ``bboxes`` or None.
        allowed_border (float): see :func:`inside_border` (``train_cfg.allowed_border``).
        pos_weight (float): classification weight of positives; <= 0 means 1.
        clip_border (bool): gts are measured clipped to the image (the box coder's
            ``clip_border``).

    Returns:
        BatchTargets: labels, weights, assignment and normaliser of the batch.
    """
    img_hw = image_hw(batch_img_metas, anchors)
    valid = inside_border(anchors, valid, img_hw, allowed_border)
    gt_bboxes, gt_valid = pad_images(
        [get_box_tensor(g.bboxes).to(anchors) for g in batch_gt_instances])
    gt_bboxes, usable, report = check_gts(gt_bboxes, gt_valid, img_hw, clip_border)
    gt_inds, assigned = assign_anchors(assigner, anchors, valid, gt_bboxes, usable,
                                       batch_gt_instances, batch_gt_instances_ignore)
    pos = valid & (gt_inds > 0)
    labels = torch.where(pos, assigned, num_classes)
    label_weights = (valid & (gt_inds >= 0)).to(anchors.dtype)
    if pos_weight > 0:
        label_weights = torch.where(pos, label_weights.new_tensor(pos_weight), label_weights)
    avg_factor = pos.sum(1).clamp(min=1).sum().to(anchors.dtype)
    return BatchTargets(labels, label_weights, torch.where(valid, gt_inds, -1), gt_bboxes,
                        avg_factor, valid, report)


def positive_pairs(targets: BatchTargets) -> Tuple[Tensor, Tensor, Tensor]:
    """The positive anchors of a batch and their gt boxes.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``img_idx`` and ``anchor_idx`` ``(P,)`` of each positive
        and its gt box ``(P, 4)``.
    """
    img_idx, anchor_idx = (targets.gt_inds > 0).nonzero(as_tuple=True)
    gt = targets.gt_bboxes[img_idx, targets.gt_inds[img_idx, anchor_idx] - 1]
    return img_idx, anchor_idx, gt


def moving_average(ema: Tensor, count: Tensor, momentum: float, update: bool) -> Tensor:
    """One step of the normaliser's moving average, without a host sync.

    ``ema = momentum * ema + (1 - momentum) * count``, started from the first count: an
    ``ema`` <= 0 (or NaN, as earlier checkpoints stored it) means no step has been seen yet. A
    real average is >= 1, since each image counts at least one positive.

    Args:
        ema (Tensor): scalar buffer holding the average.
        count (Tensor): scalar, this step's normaliser.
        momentum (float): in ``[0, 1)``.
        update (bool): write the new average into ``ema`` (training mode).

    Returns:
        Tensor: the new average (scalar, no gradient).
    """
    count = count.detach().to(ema.dtype)
    started = ema > 0  # False for NaN too
    new = torch.where(started, momentum * ema + (1 - momentum) * count, count)
    if update:
        ema.copy_(new)
    return new
