"""The anchor assignment rule of "Focal Loss for Dense Object Detection", for one image.

The paper (section 4, "Anchors"): an anchor is assigned to a ground-truth box when their IoU is
at least 0.5, to background when its IoU with every box is in ``[0, 0.4)``, and is ignored in
between; each anchor gets at most one box, the one it overlaps most. mmdet's ``MaxIoUAssigner``
(``max_iou_assigner.py``) implements that rule with a few options, all kept here:

- ``match_low_quality``: afterwards each gt also claims its best anchor(s), so that a box no
  anchor overlaps by 0.5 still gets positives (only if that best IoU is ``>= min_pos_iou``; every
  anchor tying it with ``gt_max_assign_all``, else the first). Gts claim in index order, so
  where several claim one anchor the last one wins;
- ``neg_iou_thr`` as a pair ``(lo, hi)``: background is ``[lo, hi)`` instead of ``[0, hi)``;
- ``ignore_iof_thr``: anchors whose IoF with an ignore region exceeds it get IoU ``-1`` with every
  gt, so they are neither background nor positive nor anyone's best.

mmdet quirk kept for parity: with ``min_pos_iou=0`` a gt that overlaps no anchor claims every
anchor (best IoU ``0`` ties every zero).

:func:`max_iou_assign` is the plain, single-image statement of the rule, written to be read;
``RetinaIoUAssigner.assign`` runs it, and the batched, chunked path (:mod:`.batched_max_iou`)
is tested against it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch
from mmdet.structures.bbox import bbox_overlaps
from torch import Tensor

IoUCalculator = Callable[..., Tensor]


class MaxIoURule(NamedTuple):
    """The thresholds of the rule (mmdet ``MaxIoUAssigner``'s arguments of the same names).

    Attributes:
        pos_iou_thr (float): best IoU ``>=`` this makes an anchor positive.
        neg_range (tuple[float, float]): best IoU in ``[lo, hi)`` makes it background
            (``neg_iou_thr=hi`` means ``[0, hi)``).
        min_pos_iou (float): least best IoU for a gt to claim anchors in the low-quality step.
        gt_max_assign_all (bool): a gt claims every anchor tying its best IoU, or the first.
        match_low_quality (bool): run the low-quality step.
        ignore_iof_thr (float): IoF with an ignore region ``>`` this ignores an anchor;
            ``<= 0`` disables.
        ignore_wrt_candidates (bool): IoF over the anchor's area (True) or the region's.
    """

    pos_iou_thr: float = 0.5
    neg_range: Tuple[float, float] = (0.0, 0.4)
    min_pos_iou: float = 0.0
    gt_max_assign_all: bool = True
    match_low_quality: bool = True
    ignore_iof_thr: float = -1.0
    ignore_wrt_candidates: bool = True

    def uses_ignore(self, ignore: Optional[Tensor]) -> bool:
        """mmdet's condition for looking at ignore regions at all."""
        return self.ignore_iof_thr > 0 and ignore is not None and ignore.numel() > 0

    def by_best_iou(self, max_overlaps: Tensor, argmax: Tensor) -> Tensor:
        """The paper's rule on each anchor's best IoU: background, ignored or positive.

        Args:
            max_overlaps (Tensor): ``(..., A)`` best IoU of each anchor over the gts.
            argmax (Tensor): ``(..., A)`` long, 0-based index of that gt.

        Returns:
            Tensor: ``(..., A)`` long: 0 background, -1 ignored, ``k > 0`` gt ``k - 1``.
        """
        lo, hi = self.neg_range
        gt_inds = torch.where((max_overlaps >= lo) & (max_overlaps < hi), 0, -1)
        return torch.where(max_overlaps >= self.pos_iou_thr, argmax + 1, gt_inds)


def max_iou_assign(rule: MaxIoURule, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                   ignore: Optional[Tensor] = None,
                   iou_calculator: IoUCalculator = bbox_overlaps
                   ) -> Tuple[Tensor, Tensor, Tensor]:
    """Assigns the anchors of one image by ``rule``: mmdet's ``MaxIoUAssigner.assign``.

    Args:
        rule (MaxIoURule): the thresholds.
        priors (Tensor): ``(A, 4)`` x1y1x2y2 anchors.
        gt_bboxes (Tensor): ``(G, 4)`` x1y1x2y2 gt boxes.
        gt_labels (Tensor): ``(G,)`` long class ids.
        ignore (Tensor, optional): ``(Gi, 4)`` x1y1x2y2 ignore regions.
        iou_calculator (Callable): ``calc(a, b)`` -> ``(len(a), len(b))`` IoUs and
            ``calc(a, b, mode='iof')`` -> IoFs over ``a``'s areas (mmdet's ``bbox_overlaps``
            or an assigner's ``iou_calculator``).

    Returns:
        tuple[Tensor, Tensor, Tensor]: each ``(A,)``: ``gt_inds`` (0 background, -1 ignored,
        ``k > 0`` gt ``k - 1``), ``max_overlaps`` (best IoU, ``-1`` for ignored regions, 0
        without gts; the calculator's dtype) and ``labels`` (class of the gt, -1 where not
        positive).
    """
    overlaps = iou_calculator(gt_bboxes, priors)  # (G, A)
    num_gts, num_priors = overlaps.shape
    if rule.uses_ignore(ignore) and num_priors > 0:
        if rule.ignore_wrt_candidates:
            iof = iou_calculator(priors, ignore, mode='iof').max(dim=1).values
        else:
            iof = iou_calculator(ignore, priors, mode='iof').max(dim=0).values
        overlaps[:, iof > rule.ignore_iof_thr] = -1
    if num_gts == 0 or num_priors == 0:
        # no gts: every anchor is background (ignore regions unused)
        gt_inds = overlaps.new_full((num_priors,), -1 if num_gts else 0, dtype=torch.long)
        return gt_inds, overlaps.new_zeros((num_priors,)), torch.full_like(gt_inds, -1)

    # each anchor: its best gt, first index on ties
    max_overlaps, argmax = overlaps.max(dim=0)
    gt_inds = rule.by_best_iou(max_overlaps, argmax)
    if rule.match_low_quality:
        # each gt: its best anchor(s); gts in order, so a later gt overwrites an earlier one
        gt_max, gt_argmax = overlaps.max(dim=1)
        prior_ids = torch.arange(num_priors, device=overlaps.device)
        for i in range(num_gts):
            if rule.gt_max_assign_all:
                best = overlaps[i] == gt_max[i]
            else:
                best = prior_ids == gt_argmax[i]
            gt_inds = torch.where(best & (gt_max[i] >= rule.min_pos_iou), i + 1, gt_inds)
    labels = torch.where(gt_inds > 0, gt_labels[(gt_inds - 1).clamp(min=0)].long(), -1)
    return gt_inds, max_overlaps, labels
