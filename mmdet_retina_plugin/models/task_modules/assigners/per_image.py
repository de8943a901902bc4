"""A padded batch assigned image by image: what any one-image assigner gives, in the
``(B, A)`` layout of :func:`~.batched_max_iou.assign_batched`.

Used where the batched reduction does not apply: ``RetinaIoUAssigner`` with another IoU
calculator or with jittered gts, and ``RetinaNetHead`` with an mmdet assigner that has no
``assign_batch``. Each image's valid gts, priors and ignore regions are selected by boolean
indexing, so the host waits for the device.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .batched_max_iou import BatchAssignResult

#: ``(priors (A', 4), gt_bboxes (G', 4), gt_labels (G',), ignore (Gi', 4) or None)
#: -> (gt_inds, max_overlaps, labels)``, each ``(A',)``, for one image
ImageAssigner = Callable[[Tensor, Tensor, Tensor, Optional[Tensor]],
                         Tuple[Tensor, Tensor, Tensor]]


def assign_per_image(assign_image: ImageAssigner, priors: Tensor, gt_bboxes: Tensor,
                     gt_labels: Tensor, gt_valid: Tensor, prior_valid: Optional[Tensor] = None,
                     gt_bboxes_ignore: Optional[Tensor] = None,
                     ignore_valid: Optional[Tensor] = None) -> BatchAssignResult:
    """``assign_image`` on each image's valid gts, valid priors and valid ignore boxes, in
    image order, scattered back to the padded layout.

    Args:
        assign_image (ImageAssigner): assigns one image.
        priors (Tensor): ``(A, 4)`` priors shared by all images.
        gt_bboxes (Tensor): ``(B, G, 4)`` gt boxes, padded.
        gt_labels (Tensor): ``(B, G)`` long class ids.
        gt_valid (Tensor): ``(B, G)`` bool, False for padding.
        prior_valid (Tensor, optional): ``(B, A)`` bool; invalid priors get ``gt_inds=-1``,
            ``max_overlaps=0``, ``labels=-1``. Default: all valid.
        gt_bboxes_ignore (Tensor, optional): ``(B, Gi, 4)`` ignore regions, padded.
        ignore_valid (Tensor, optional): ``(B, Gi)`` bool. Default: all valid.

    Returns:
        BatchAssignResult: ``(B, A)`` ``gt_inds`` (``k > 0``: gt ``k - 1`` of the image's
        padded gts), ``max_overlaps`` (the widest dtype the images gave) and ``labels``.
    """
    num_imgs, num_priors = gt_bboxes.size(0), priors.size(0)
    if prior_valid is None:
        prior_valid = gt_valid.new_ones((num_imgs, num_priors))
    out_gt_inds = priors.new_full((num_imgs, num_priors), -1, dtype=torch.long)
    out_labels = out_gt_inds.clone()
    per_image = []
    for i in range(num_imgs):
        ignore = None
        if gt_bboxes_ignore is not None:
            ignore = gt_bboxes_ignore[i] if ignore_valid is None else \
                gt_bboxes_ignore[i, ignore_valid[i]]
        gt_inds, max_overlaps, labels = assign_image(
            priors[prior_valid[i]], gt_bboxes[i, gt_valid[i]], gt_labels[i, gt_valid[i]], ignore)
        # compact gt k (1-based) -> its padded slot + 1; 0 and -1 stay
        slot = torch.cat([gt_inds.new_tensor([-1, 0]), gt_valid[i].nonzero()[:, 0] + 1])
        out_gt_inds[i, prior_valid[i]] = slot[gt_inds + 1]
        out_labels[i, prior_valid[i]] = labels
        per_image.append(max_overlaps)
    # The calculator's dtype (fp16 calculators give fp16 on CUDA, float32 on the CPU, so
    # with gpu_assign_thr images may differ): widen to hold every image's values exactly.
    dtype = functools.reduce(torch.promote_types, (m.dtype for m in per_image[1:]),
                             per_image[0].dtype if per_image else priors.dtype)
    out_overlaps = priors.new_zeros((num_imgs, num_priors), dtype=dtype)
    for i, max_overlaps in enumerate(per_image):
        out_overlaps[i, prior_valid[i]] = max_overlaps.to(dtype)
    return BatchAssignResult(out_gt_inds, out_overlaps, out_labels)
