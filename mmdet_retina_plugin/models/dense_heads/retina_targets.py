"""Training targets of a whole batch for an anchor head: border filter, gt checks, assignment,
labels / weights, and the loss normaliser with its optional moving average.

Everything works on ``(B, A)`` tensors over the anchors of all levels (``A = sum(Hi*Wi*Ab)``,
``Ab`` base anchors per location), with per-image gts padded to ``(B, G, 4)``. The semantics are
mmdet's ``AnchorHead.get_targets`` with ``PseudoSampler`` (every valid anchor is a sample).
Nothing here makes the host wait for the device (no ``nonzero``, ``item``, boolean indexing or
blocking copies) except mmdet assigners without ``assign_batch``: every shape follows from the
anchors' and the largest gt count, and bad gts are reported through :class:`GtReporter`.
``RetinaNetHead`` builds its losses on these, and ``RetinaAssignStatsHook`` counts them.
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import Deque, NamedTuple, Optional, Protocol, Sequence, Tuple

import torch
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import InstanceList, OptInstanceList
from mmengine.structures import InstanceData
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..losses.focal_eager import segment_sums


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


class GtBatch(NamedTuple):
    """The gts of a batch as padded device tensors: what the tensor core of the loss reads.

    Attributes:
        bboxes (Tensor): ``(B, G, 4)`` x1y1x2y2 gt boxes, zero-padded to the largest gt count.
        labels (Tensor): ``(B, G)`` long classes in ``[0, K)`` (padding 0, unused).
        valid (Tensor): ``(B, G)`` bool, False for padding.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)`` (``img_shape``), the anchors' dtype.
        ignore_bboxes (Tensor, optional): ``(B, Gi, 4)`` ignore regions, zero-padded; None when
            no image has any.
        ignore_valid (Tensor, optional): ``(B, Gi)`` bool, False for padding.
    """

    bboxes: Tensor
    labels: Tensor
    valid: Tensor
    img_hw: Tensor
    ignore_bboxes: Optional[Tensor] = None
    ignore_valid: Optional[Tensor] = None


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
            (row 1); see :func:`check_gts` and :class:`GtReporter`.
    """

    labels: Tensor
    label_weights: Tensor
    gt_inds: Tensor
    gt_bboxes: Tensor
    avg_factor: Tensor
    anchor_valid: Tensor
    bad_gts: Tensor


def host_tensor(values: Sequence, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A tensor of host values on ``device`` without waiting for the device.

    A plain ``torch.tensor(values, device='cuda')`` copies from pageable memory and then waits
    for the whole stream; from pinned memory the copy is queued (``non_blocking``) and the host
    goes on.

    Args:
        values (Sequence): nested Python numbers.
        dtype (torch.dtype): dtype of the result.
        device (torch.device): device of the result.

    Returns:
        Tensor: ``torch.tensor(values, dtype=dtype)`` on ``device``.
    """
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == 'cuda':
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def pad_images(items: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Pads per-image ``[(Gi, ...)]`` with zeros, without a host sync.

    Args:
        items (Sequence[Tensor]): one tensor per image, ``(Gi, ...)``, on one device.

    Returns:
        Tuple[Tensor, Tensor]: ``(B, G, ...)`` padded values and the ``(B, G)`` bool mask of
        real entries, ``G = max(Gi)``.
    """
    device = items[0].device
    counts = host_tensor([t.size(0) for t in items], torch.long, device)
    padded = pad_sequence(list(items), batch_first=True)
    valid = torch.arange(padded.size(1), device=device) < counts[:, None]
    return padded, valid


def image_hw(batch_img_metas: Sequence[dict], like: Tensor) -> Tensor:
    """``(B, 2)`` ``(h, w)`` of each image's ``img_shape``, with ``like``'s dtype and device."""
    return host_tensor([m['img_shape'][:2] for m in batch_img_metas], like.dtype, like.device)


def box_bounds(img_hw: Tensor) -> Tensor:
    """``(B, 1, 4)`` upper bounds ``(w, h, w, h)`` of x1y1x2y2 boxes per image, from ``(B, 2)``
    ``(h, w)``; by flip and repeat, as indexing with a list would copy the index to the device
    from pageable memory and wait for the CUDA stream."""
    return img_hw.flip(-1).repeat(1, 2)[:, None]


def pad_gts(batch_gt_instances: InstanceList, batch_img_metas: Sequence[dict],
            batch_gt_instances_ignore: OptInstanceList, like: Tensor) -> GtBatch:
    """Pads a batch's gts (and ignore regions) into a :class:`GtBatch` on ``like``'s device.

    Args:
        batch_gt_instances (InstanceList): per image ``bboxes`` ``(Gi, 4)`` and ``labels``
            ``(Gi,)``.
        batch_img_metas (Sequence[dict]): per image meta with ``img_shape``.
        batch_gt_instances_ignore (OptInstanceList): per image ignored ``bboxes`` or None.
        like (Tensor): boxes take its dtype and device (the anchors).

    Returns:
        GtBatch: the padded tensors.
    """
    bboxes, valid = pad_images([get_box_tensor(g.bboxes).to(like) for g in batch_gt_instances])
    labels, _ = pad_images([g.labels.to(like.device) for g in batch_gt_instances])
    ignores = batch_gt_instances_ignore or [None] * len(batch_gt_instances)
    ignore_bboxes = ignore_valid = None
    if any(ig is not None for ig in ignores):
        ignore_bboxes, ignore_valid = pad_images(
            [get_box_tensor(ig.bboxes).to(like) if ig is not None else like.new_zeros(0, 4)
             for ig in ignores])
    return GtBatch(bboxes, labels.long(), valid, image_hw(batch_img_metas, like),
                   ignore_bboxes, ignore_valid)


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
              clip_border: bool) -> Tuple[Tensor, Tensor, Tensor]:
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
        Tuple[Tensor, Tensor, Tensor]: ``gt_bboxes`` with non-finite boxes zeroed (so no NaN
        reaches the assigner), the ``(B, G)`` mask of usable gts, and the ``(2, B)`` long
        per-image counts of non-finite (row 0) and degenerate (row 1) gts left out.
    """
    finite = gt_bboxes.isfinite().all(-1)
    boxes = torch.where(finite[..., None], gt_bboxes, 0.0)
    if clip_border:
        hi = box_bounds(img_hw)
        boxes_seen = torch.minimum(boxes.clamp(min=0), hi)
    else:
        boxes_seen = boxes
    positive = (boxes_seen[..., 2:] > boxes_seen[..., :2]).all(-1)
    usable = gt_valid & finite & positive
    counts = torch.stack([(gt_valid & ~finite).sum(1), (gt_valid & finite & ~positive).sum(1)])
    return boxes, usable, counts


class _PendingReport(NamedTuple):
    """Bad-gt counts on their way to the host: readable once ``ready`` has completed."""

    counts: Tensor
    ready: Optional[torch.cuda.Event]
    names: Tuple[str, ...]


class GtReporter:
    """Raises for non-finite gts and warns once per image about degenerate ones, without
    making the host wait for the device.

    Counts on the CPU are read at once. Device counts are copied ``non_blocking`` into pinned
    memory behind a recorded CUDA event and read when the event has completed: at the next
    :meth:`submit` or :meth:`poll` that finds it done, and at the latest at the next
    :meth:`submit` (one training step later; by then the device has long passed the event, so
    waiting on it costs nothing) or :meth:`flush`. On CUDA the ``ValueError`` for a non-finite
    gt therefore comes from the next step's loss; meanwhile the box was left out of the
    assignment, so no NaN reached the losses.
    """

    def __init__(self) -> None:
        self._pending: Deque[_PendingReport] = deque()

    def submit(self, counts: Tensor, batch_img_metas: Sequence[dict]) -> None:
        """Queues one batch's counts, after reporting every batch queued before it.

        Args:
            counts (Tensor): ``(2, B)`` long from :func:`check_gts`.
            batch_img_metas (Sequence[dict]): per-image metas; ``img_id`` / ``img_path`` name
                the image when present.

        Raises:
            ValueError: a gt box of this batch (on the CPU) or of an earlier one has a NaN or
                infinite coordinate.
        """
        self.flush()
        names = tuple(f"img_id={m.get('img_id')!r} img_path={m.get('img_path')!r}"
                      for m in batch_img_metas)
        ready = None
        if counts.device.type != 'cpu':
            host = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            counts = host.copy_(counts.detach(), non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        self._pending.append(_PendingReport(counts, ready, names))
        self.poll()

    def poll(self) -> None:
        """Reports the queued batches whose counts have reached the host, oldest first."""
        while self._pending and (self._pending[0].ready is None
                                 or self._pending[0].ready.query()):
            self._report(self._pending.popleft())

    def flush(self) -> None:
        """Reports every queued batch, waiting for the device where a copy is still on its
        way."""
        while self._pending:
            pending = self._pending.popleft()
            # query first: a completed event needs no synchronize call (which CUDA's sync
            # debug mode reports, and which would wait if the copy were still on its way)
            if pending.ready is not None and not pending.ready.query():
                pending.ready.synchronize()
            self._report(pending)

    @staticmethod
    def _report(pending: _PendingReport) -> None:
        non_finite, degenerate = pending.counts.tolist()  # on the host: no sync
        if any(non_finite):
            raise ValueError('gt bboxes must be finite; NaN or inf in ' + '; '.join(
                f'{n} box(es) of image {i} ({pending.names[i]})'
                for i, n in enumerate(non_finite) if n))
        for i, n in enumerate(degenerate):
            if n:
                warnings.warn(f'{n} gt box(es) of image {i} ({pending.names[i]}) have width or '
                              'height <= 0 (inside the image) and are ignored: no positive '
                              'anchors, no box loss', stacklevel=3)


def assign_anchors(assigner: object, anchors: Tensor, valid: Tensor, gts: GtBatch,
                   gt_usable: Tensor) -> Tuple[Tensor, Tensor]:
    """Assigns every anchor of every image, in one call when ``assigner`` is a
    :class:`BatchAssigner`, else image by image through mmdet's ``assign``.

    Args:
        assigner (object): a :class:`BatchAssigner` or any mmdet assigner.
        anchors (Tensor): ``(A, 4)``.
        valid (Tensor): ``(B, A)`` bool, anchors taking part in the assignment.
        gts (GtBatch): the padded gts (``bboxes`` as cleaned by :func:`check_gts`).
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
    # Per image, on the valid anchors only like mmdet, scattered back to all anchors. mmdet's
    # assigners take data-dependent shapes, so this path syncs anyway.
    gt_inds = valid.new_full(valid.shape, -1, dtype=torch.long)
    labels = valid.new_full(valid.shape, -1, dtype=torch.long)
    for i in range(valid.size(0)):
        kept = gt_usable[i].nonzero().squeeze(1)
        gt_i = InstanceData(bboxes=gts.bboxes[i, kept], labels=gts.labels[i, kept])
        ignore = None
        if gts.ignore_bboxes is not None:
            ignore = InstanceData(bboxes=gts.ignore_bboxes[i, gts.ignore_valid[i]])
        res = assigner.assign(InstanceData(priors=anchors[valid[i]]), gt_i, ignore)
        # back to indices of the image's padded gts: lookup[k] = kept[k - 1] + 1, lookup[0] = 0
        lookup = torch.cat([kept.new_zeros(1), kept + 1])
        gt_inds[i, valid[i]] = torch.where(res.gt_inds > 0, lookup[res.gt_inds.clamp(min=0)],
                                           res.gt_inds)
        labels[i, valid[i]] = res.labels
    return gt_inds, labels


def batch_targets(assigner: object, anchors: Tensor, valid: Tensor, gts: GtBatch,
                  num_classes: int, allowed_border: float = -1, pos_weight: float = -1,
                  clip_border: bool = True) -> BatchTargets:
    """Classification targets of a whole batch (mmdet ``AnchorHead.get_targets`` with
    ``PseudoSampler``), leaving out unusable gts (see :func:`check_gts`).

    Without host syncs when ``assigner`` assigns the batch without them (``RetinaIoUAssigner``
    in its default modes): every shape follows from the anchors' and the padded gts'.

    Args:
        assigner (object): a :class:`BatchAssigner` or any mmdet assigner.
        anchors (Tensor): ``(A, 4)`` anchors of all levels (shared by the batch).
        valid (Tensor): ``(B, A)`` bool, False on each image's padding.
        gts (GtBatch): the padded gts, from :func:`pad_gts`.
        num_classes (int): ``K``; label ``K`` is background.
        allowed_border (float): see :func:`inside_border` (``train_cfg.allowed_border``).
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


def anchor_targets(assigner: object, anchors: Tensor, valid: Tensor,
                   batch_gt_instances: InstanceList, batch_img_metas: Sequence[dict],
                   num_classes: int, batch_gt_instances_ignore: OptInstanceList = None,
                   allowed_border: float = -1, pos_weight: float = -1,
                   clip_border: bool = True) -> BatchTargets:
    """:func:`batch_targets` of per-image gts (see :func:`pad_gts` for the arguments)."""
    return batch_targets(
        assigner, anchors, valid,
        pad_gts(batch_gt_instances, batch_img_metas, batch_gt_instances_ignore, anchors),
        num_classes, allowed_border, pos_weight, clip_border)


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


def encode_boxes(bbox_coder: object, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """``bbox_coder.encode`` of ``(N, 4)`` pairs; for ``DeltaXYWHBBoxCoder`` without a host
    sync.

    mmdet's ``bbox2delta`` builds its means and stds with ``new_tensor``, a copy from pageable
    memory that waits for the whole CUDA stream. The same operations in the same order, with
    the means and stds queued from pinned memory, give the same values without the wait. Other
    coders are called as they are.

    Args:
        bbox_coder (object): the head's box coder.
        anchors (Tensor): ``(N, 4)`` x1y1x2y2 anchors.
        gt_boxes (Tensor): ``(N, 4)`` x1y1x2y2 target boxes.

    Returns:
        Tensor: ``(N, encode_size)`` regression targets.
    """
    if type(bbox_coder) is not DeltaXYWHBBoxCoder:
        return bbox_coder.encode(anchors, gt_boxes)
    p, g = anchors.float().unbind(-1), gt_boxes.float().unbind(-1)
    px, py = (p[0] + p[2]) * 0.5, (p[1] + p[3]) * 0.5
    pw, ph = p[2] - p[0], p[3] - p[1]
    gx, gy = (g[0] + g[2]) * 0.5, (g[1] + g[3]) * 0.5
    gw, gh = g[2] - g[0], g[3] - g[1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw),
                          torch.log(gh / ph)], dim=-1)
    means, stds = (host_tensor(v, torch.float32, deltas.device)
                   for v in (bbox_coder.means, bbox_coder.stds))
    return deltas.sub_(means).div_(stds)


def level_sums(values: Tensor, level_sizes: Sequence[int]) -> Tensor:
    """Sums a per-anchor quantity over each pyramid level (all images, all trailing entries).

    Args:
        values (Tensor): ``(B, A, ...)``, each image's ``A = sum(level_sizes)`` anchors level
            by level.
        level_sizes (Sequence[int]): anchors per level ``Hi*Wi*Ab``.

    Returns:
        Tensor: ``(L,)`` the sums, in ``values``' dtype.
    """
    return segment_sums(values.reshape(values.size(0), values.size(1), -1).sum(2).flatten(),
                        level_sizes)


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
