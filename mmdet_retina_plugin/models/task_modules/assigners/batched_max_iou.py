"""The rule of :mod:`.max_iou_rule` for a whole padded batch, chunked over the anchors.

What it computes: for ``B`` images sharing ``A`` anchors, with gts padded to ``(B, G, 4)``,
exactly what :func:`~.max_iou_rule.max_iou_assign` gives on each image's valid gts and valid
anchors (bit for bit: the IoUs come from :func:`.batched_iou.pairwise_overlaps`, equal to mmdet's
``bbox_overlaps``, and ties are broken the same way), scattered back to all anchors.

Why batched and chunked: the training loss assigns every step, and the ``(B, G, A)`` IoUs of a
crowded batch (``A`` is about 180k for an 800x1216 image) do not fit in memory at once. So the
IoUs are made and reduced one chunk of anchors at a time, keeping only what the rule needs:
each anchor's best gt and each gt's best IoU. The low-quality step with ``gt_max_assign_all``
needs "IoU == the gt's best over ALL anchors", known only after the last chunk; instead of
computing the IoUs again, each chunk stores one bit per (gt, anchor), whether the anchor ties the
gt's best within the chunk (``B * G * A / 8`` bytes in all), and the bits of the chunks whose
best is the gt's overall best count. The last gt claiming an anchor (mmdet's loop order) is the
highest bit set. Every shape follows from the inputs' shapes, so the host never waits for the
device and the whole function compiles as one graph.
"""
from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .batched_iou import box_areas, pairwise_overlaps
from .max_iou_rule import MaxIoURule

# IoU given to pairs that must not take part (padded gts, invalid anchors): below every real IoU
# and below the ``-1`` of ignored anchors, so such pairs never win a max.
_EXCLUDED = -2.0
# Default chunk sizes (IoU values per chunk): large on CUDA to amortise kernel launches, small
# on CPU so the chunk's few float buffers stay in cache across the ~15 elementwise passes.
_CUDA_CHUNK_NUMEL = 2**24
_CPU_CHUNK_NUMEL = 2**20


class BatchAssignResult(NamedTuple):
    """Assignment of ``A`` shared priors in ``B`` images.

    Attributes:
        gt_inds (Tensor): ``(B, A)`` long. ``0``: background; ``-1``: ignored (also every prior
            with ``prior_valid`` False); ``k > 0``: assigned to gt ``k - 1`` of its image.
        max_overlaps (Tensor): ``(B, A)`` float. Best IoU of the prior over the image's valid gts
            (``-1`` inside ignore regions, ``0`` where the image has no gts or the prior is
            invalid).
        labels (Tensor): ``(B, A)`` long. Class of the assigned gt; ``-1`` where not positive.
    """
    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor


def assign_batched(rule: MaxIoURule, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                   gt_valid: Tensor, prior_valid: Optional[Tensor] = None,
                   gt_bboxes_ignore: Optional[Tensor] = None,
                   ignore_valid: Optional[Tensor] = None,
                   chunk_numel: Optional[int] = None) -> BatchAssignResult:
    """Assigns shared priors in a padded batch by ``rule``, without host syncs.

    Args:
        rule (MaxIoURule): the thresholds.
        priors (Tensor): ``(A, 4+)`` x1y1x2y2 priors shared by all images.
        gt_bboxes (Tensor): ``(B, G, 4+)`` x1y1x2y2 gt boxes, padded.
        gt_labels (Tensor): ``(B, G)`` long class ids (padding values unused).
        gt_valid (Tensor): ``(B, G)`` bool, False for padding.
        prior_valid (Tensor, optional): ``(B, A)`` bool, False for priors treated as removed:
            they never win a gt's best-prior match and get ``(-1, 0, -1)``. Default: all valid.
        gt_bboxes_ignore (Tensor, optional): ``(B, Gi, 4+)`` ignore regions, padded.
        ignore_valid (Tensor, optional): ``(B, Gi)`` bool, False for padding. Default: all valid.
        chunk_numel (int, optional): most (image, gt, prior) IoU values held at once; None
            picks ``2**24`` on CUDA, ``2**20`` on the CPU.

    Returns:
        BatchAssignResult: ``(B, A)`` ``gt_inds``, ``max_overlaps``, ``labels``.
    """
    num_imgs, num_gts = gt_bboxes.shape[:2]
    num_priors = priors.size(0)
    priors = priors[:, :4]
    gt_bboxes = gt_bboxes[..., :4]
    if num_gts == 0 or num_priors == 0:
        # no gts: every prior is background (ignore regions unused)
        gt_inds = gt_valid.new_zeros((num_imgs, num_priors), dtype=torch.long)
        if prior_valid is not None:
            gt_inds = torch.where(prior_valid, gt_inds, -1)
        dtype = torch.promote_types(priors.dtype, gt_bboxes.dtype)
        return BatchAssignResult(gt_inds, priors.new_zeros(gt_inds.shape, dtype=dtype),
                                 torch.full_like(gt_inds, -1))
    ignore = None
    if rule.uses_ignore(gt_bboxes_ignore):
        ignore = gt_bboxes_ignore[..., :4]
        if ignore_valid is None:
            ignore_valid = ignore.new_ones(ignore.shape[:2], dtype=torch.bool)
    prior_areas = box_areas(priors)
    gt_areas = box_areas(gt_bboxes)

    def overlaps_of(start: int, end: int) -> Tensor:
        ov = pairwise_overlaps(gt_bboxes, priors[None, start:end], 'iou',
                               area1=gt_areas, area2=prior_areas[None, start:end])
        if ignore is not None:
            ignored = _ignored_priors(rule, priors[start:end], prior_areas[start:end], ignore,
                                      ignore_valid)
            ov.masked_fill_(ignored[:, None, :], -1.0)
        keep = gt_valid[:, :, None]
        if prior_valid is not None:
            keep = keep & prior_valid[:, None, start:end]
        return ov.masked_fill_(~keep, _EXCLUDED)

    width = num_imgs * max(num_gts, 0 if ignore is None else ignore.size(1))
    chunks = _chunks(num_priors, width, chunk_numel, priors.device)
    max_overlaps, argmax, low_quality = _reduce_overlaps(rule, overlaps_of, chunks, gt_valid)
    return _assignment_from_best(rule, max_overlaps, argmax, low_quality, gt_valid, prior_valid,
                                 gt_labels)


def _assignment_from_best(rule: MaxIoURule, max_overlaps: Tensor, argmax: Tensor,
                          low_quality: Optional[Tensor], gt_valid: Tensor,
                          prior_valid: Optional[Tensor], gt_labels: Tensor
                          ) -> BatchAssignResult:
    """The rule on the reduced overlaps, then images without gts, removed priors and labels.

    Args:
        rule (MaxIoURule): the thresholds.
        max_overlaps (Tensor): ``(B, A)`` best IoU per prior.
        argmax (Tensor): ``(B, A)`` 0-based index of that best gt.
        low_quality (Tensor, optional): ``(B, A)`` long, ``k > 0`` where gt ``k - 1`` claims
            the prior in the low-quality step, else 0; None when that step is off.
        gt_valid (Tensor): ``(B, G)`` bool.
        prior_valid (Tensor, optional): ``(B, A)`` bool.
        gt_labels (Tensor): ``(B, G)`` class ids, ``G >= 1``.

    Returns:
        BatchAssignResult: ``(B, A)`` tensors.
    """
    gt_inds = rule.by_best_iou(max_overlaps, argmax)
    if low_quality is not None:
        gt_inds = torch.where(low_quality > 0, low_quality, gt_inds)
    # No gts in an image: everything is background (mmdet skips ignore regions then too).
    has_gt = gt_valid.any(dim=1, keepdim=True)
    gt_inds = torch.where(has_gt, gt_inds, 0)
    max_overlaps = torch.where(has_gt, max_overlaps, 0.0)
    if prior_valid is not None:
        gt_inds = torch.where(prior_valid, gt_inds, -1)
        max_overlaps = torch.where(prior_valid, max_overlaps, 0.0)
    labels = gt_labels.long().gather(1, (gt_inds - 1).clamp(min=0))
    return BatchAssignResult(gt_inds, max_overlaps, torch.where(gt_inds > 0, labels, -1))


def _chunks(num_priors: int, width: int, chunk_numel: Optional[int], device: torch.device
            ) -> List[Tuple[int, int]]:
    """Prior ranges ``[start, end)`` holding at most ``chunk_numel`` values of width ``width``
    (= images x max(gts, ignore boxes)) each."""
    if chunk_numel is None:
        chunk_numel = _CUDA_CHUNK_NUMEL if device.type == 'cuda' else _CPU_CHUNK_NUMEL
    step = max(1, chunk_numel // max(width, 1))
    return [(s, min(s + step, num_priors)) for s in range(0, num_priors, step)]


def _reduce_overlaps(rule: MaxIoURule, overlaps_of: Callable[[int, int], Tensor],
                     chunks: List[Tuple[int, int]], gt_valid: Tensor
                     ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Reduces the ``(B, G, A)`` overlaps in one pass over chunks of priors (see the module's
    docstring for the tie bits).

    Args:
        rule (MaxIoURule): the thresholds.
        overlaps_of (Callable): ``overlaps_of(start, end)`` -> ``(B, G, end - start)``
            overlaps of the priors ``start:end``, ignored priors at ``-1``, pairs that must
            not take part at ``_EXCLUDED``; it may be modified.
        chunks (list[tuple[int, int]]): prior ranges covering ``[0, A)`` in order.
        gt_valid (Tensor): ``(B, G)`` bool, False for padding.

    Returns:
        tuple: ``max_overlaps`` ``(B, A)`` float, ``argmax`` ``(B, A)`` long (0-based gt),
        ``low_quality`` ``(B, A)`` long (``k > 0``: claimed by gt ``k - 1``) or None.
    """
    num_imgs, num_gts = gt_valid.shape
    num_priors = chunks[-1][1]
    device = gt_valid.device
    ties_needed = rule.match_low_quality and rule.gt_max_assign_all
    argmax = torch.empty((num_imgs, num_priors), dtype=torch.long, device=device)
    gt_argmax = argmax.new_zeros((num_imgs, num_gts))
    if ties_needed:
        ties = argmax.new_zeros((num_imgs, -(-num_gts // 8), num_priors), dtype=torch.uint8)
    for k, (start, end) in enumerate(chunks):
        ov = overlaps_of(start, end)
        if k == 0:  # the overlaps' dtype: the boxes'
            max_overlaps = ov.new_empty((num_imgs, num_priors))
            gt_max = ov.new_full((num_imgs, num_gts), -math.inf)
            if ties_needed:
                chunk_gt_max = ov.new_empty((len(chunks), num_imgs, num_gts))
        max_overlaps[:, start:end], argmax[:, start:end] = ov.max(dim=1)
        c_max, c_arg = ov.max(dim=2)
        # Strict ">" keeps the earliest prior on ties, like one max over all priors.
        better = c_max > gt_max
        gt_max = torch.where(better, c_max, gt_max)
        gt_argmax = torch.where(better, c_arg + start, gt_argmax)
        if ties_needed:
            chunk_gt_max[k] = c_max
            _pack_gt_bits(ov == c_max[:, :, None], out=ties[:, :, start:end])
    if not rule.match_low_quality:
        return max_overlaps, argmax, None

    # mmdet: `if gt_max_overlaps[i] >= min_pos_iou` (padded gts sit at _EXCLUDED < 0).
    claims = gt_valid & (gt_max >= rule.min_pos_iou)
    low_quality = argmax.new_zeros((num_imgs, num_priors))
    if not rule.gt_max_assign_all:
        # Several gts may share a best prior: the largest id (mmdet's last write) wins.
        gt_ids = torch.arange(1, num_gts + 1, device=device)
        return max_overlaps, argmax, low_quality.scatter_reduce_(
            1, gt_argmax, torch.where(claims, gt_ids, 0), 'amax')
    for k, (start, end) in enumerate(chunks):
        live = _pack_gt_bits((claims & (chunk_gt_max[k] == gt_max))[:, :, None])
        low_quality[:, start:end] = _last_gt_bit(ties[:, :, start:end] & live)
    return max_overlaps, argmax, low_quality


def _ignored_priors(rule: MaxIoURule, priors: Tensor, prior_areas: Tensor, ignore: Tensor,
                    ignore_valid: Tensor) -> Tensor:
    """Priors whose max IoF with the image's ignore boxes exceeds ``rule.ignore_iof_thr``.

    Args:
        rule (MaxIoURule): the thresholds.
        priors (Tensor): ``(C, 4)`` priors of one chunk.
        prior_areas (Tensor): ``(C,)`` their areas.
        ignore (Tensor): ``(B, Gi, 4)`` ignore boxes.
        ignore_valid (Tensor): ``(B, Gi)`` bool, False for padding.

    Returns:
        Tensor: ``(B, C)`` bool.
    """
    if rule.ignore_wrt_candidates:
        # mmdet: iof(priors, ignore) -> (A, Gi), max over ignore boxes.
        iof = pairwise_overlaps(priors[None], ignore, 'iof', area1=prior_areas[None])
        iof = iof.masked_fill_(~ignore_valid[:, None, :], _EXCLUDED)
        return iof.amax(dim=2) > rule.ignore_iof_thr
    # mmdet: iof(ignore, priors) -> (Gi, A), max over ignore boxes.
    iof = pairwise_overlaps(ignore, priors[None], 'iof')
    iof = iof.masked_fill_(~ignore_valid[:, :, None], _EXCLUDED)
    return iof.amax(dim=1) > rule.ignore_iof_thr


def _pack_gt_bits(mask: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """Packs a per-gt mask 8 gts to a byte: bit ``i % 8`` of byte ``i // 8`` is gt ``i``.

    Args:
        mask (Tensor): ``(B, G, N)`` bool.
        out (Tensor, optional): ``(B, ceil(G / 8), N)`` uint8 of zeros to write into.

    Returns:
        Tensor: ``(B, ceil(G / 8), N)`` uint8.
    """
    num_imgs, num_gts, n = mask.shape
    if out is None:
        out = mask.new_zeros((num_imgs, -(-num_gts // 8), n), dtype=torch.uint8)
    for bit in range(8):
        group = mask[:, bit::8]
        out[:, :group.size(1)] |= group.to(torch.uint8) << bit
    return out


def _last_gt_bit(packed: Tensor) -> Tensor:
    """1-based index of the LAST gt whose bit is set (mmdet's last write wins), 0 if none.

    Args:
        packed (Tensor): ``(B, ceil(G / 8), N)`` uint8 from :func:`_pack_gt_bits`.

    Returns:
        Tensor: ``(B, N)`` long.
    """
    byte_ids = torch.arange(1, packed.size(1) + 1, dtype=torch.int32, device=packed.device)
    top = torch.where(packed != 0, byte_ids[:, None], 0).amax(dim=1).long()  # 0: no bit set
    byte = packed.gather(1, (top - 1).clamp_(min=0)[:, None]).squeeze(1)
    # frexp exponent - 1 is floor(log2(byte)) exactly: the byte's highest set bit.
    high_bit = torch.frexp(byte.float()).exponent.long() - 1
    return torch.where(top > 0, (top - 1) * 8 + high_bit + 1, 0)
