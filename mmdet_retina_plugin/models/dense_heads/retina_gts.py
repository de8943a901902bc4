"""A batch's gts as padded device tensors, and the check that finds gts no anchor may learn from.

Per-image gts (``Gi`` boxes each) become ``(B, G, 4)`` tensors padded to the largest count, so
that the loss's shapes follow from the batch's alone; nothing here makes the host wait for the
device (counts are queued from pinned host memory, bad gts are only counted, see
:class:`~.retina_gt_reporter.GtReporter`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import InstanceList, OptInstanceList
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ...utils.compiling import is_compiling


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
    if is_compiling():  # a constant of the graph, made on the device (no host copy in it)
        return torch.tensor(values, dtype=dtype, device=device)
    host = torch.tensor(values, dtype=dtype)
    if torch.device(device).type == 'cuda':
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def pad_images(items: Sequence[Tensor], min_count: int = 0) -> Tuple[Tensor, Tensor]:
    """Pads per-image ``[(Gi, ...)]`` with zeros, without a host sync.

    Args:
        items (Sequence[Tensor]): one tensor per image, ``(Gi, ...)``, on one device.
        min_count (int): pad to at least this many entries (a fixed ``G`` for static shapes).

    Returns:
        Tuple[Tensor, Tensor]: ``(B, G, ...)`` padded values and the ``(B, G)`` bool mask of
        real entries, ``G = max(max(Gi), min_count)``.
    """
    device = items[0].device
    sizes = [t.size(0) for t in items]
    counts = host_tensor(sizes, torch.long, device)
    items = list(items)
    if min_count > max(sizes):  # one longer row sets pad_sequence's width
        first = items[0]
        items[0] = torch.cat([first, first.new_zeros(min_count - sizes[0], *first.shape[1:])])
    padded = pad_sequence(items, batch_first=True)
    valid = torch.arange(padded.size(1), device=device) < counts[:, None]
    return padded, valid


def image_hw(batch_img_metas: Sequence[dict], like: Tensor) -> Tensor:
    """``(B, 2)`` ``(h, w)`` of each image's ``img_shape``, with ``like``'s dtype and device."""
    return host_tensor([m['img_shape'][:2] for m in batch_img_metas], like.dtype, like.device)


def clip_boxes(bboxes: Tensor, img_hw: Tensor) -> Tensor:
    """Clips ``(B, M, 4)`` x1y1x2y2 boxes to ``[0, w] x [0, h]`` of each image.

    Args:
        bboxes (Tensor): ``(B, M, 4)``.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)``.

    Returns:
        Tensor: ``(B, M, 4)``.
    """
    # upper bounds (w, h, w, h) by flip and repeat: indexing with a list would copy the index
    # to the device from pageable memory and wait for the CUDA stream
    return bboxes.clamp(min=bboxes.new_zeros(1), max=img_hw.flip(-1).repeat(1, 2)[:, None])


def pad_gts(batch_gt_instances: InstanceList, batch_img_metas: Sequence[dict],
            batch_gt_instances_ignore: OptInstanceList, like: Tensor,
            min_count: int = 0) -> GtBatch:
    """Pads a batch's gts (and ignore regions) into a :class:`GtBatch` on ``like``'s device.

    Args:
        batch_gt_instances (InstanceList): per image ``bboxes`` ``(Gi, 4)`` and ``labels``
            ``(Gi,)``.
        batch_img_metas (Sequence[dict]): per image meta with ``img_shape``.
        batch_gt_instances_ignore (OptInstanceList): per image ignored ``bboxes`` or None.
        like (Tensor): boxes take its dtype and device (the anchors).
        min_count (int): pad gts (and ignore regions, where any image has some) to at least
            this many per image, so that batches with fewer share one shape.

    Returns:
        GtBatch: the padded tensors.
    """
    bboxes, valid = pad_images([get_box_tensor(g.bboxes).to(like) for g in batch_gt_instances],
                               min_count)
    labels, _ = pad_images([g.labels.to(like.device) for g in batch_gt_instances], min_count)
    ignores = batch_gt_instances_ignore or [None] * len(batch_gt_instances)
    ignore_bboxes = ignore_valid = None
    if any(ig is not None for ig in ignores):
        ignore_bboxes, ignore_valid = pad_images(
            [get_box_tensor(ig.bboxes).to(like) if ig is not None else like.new_zeros(0, 4)
             for ig in ignores], min_count)
    return GtBatch(bboxes, labels.long(), valid, image_hw(batch_img_metas, like),
                   ignore_bboxes, ignore_valid)


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
    boxes_seen = clip_boxes(boxes, img_hw) if clip_border else boxes
    positive = (boxes_seen[..., 2:] > boxes_seen[..., :2]).all(-1)
    usable = gt_valid & finite & positive
    counts = torch.stack([(gt_valid & ~finite).sum(1), (gt_valid & finite & ~positive).sum(1)])
    return boxes, usable, counts
