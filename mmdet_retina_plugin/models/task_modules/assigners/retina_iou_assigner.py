"""Max-IoU anchor assigner for RetinaNet: mmdet's ``MaxIoUAssigner`` semantics, batched,
vectorised and chunked.

Per anchor (prior) the result follows mmdet's four steps exactly:

1. every anchor starts ignored (``-1``);
2. anchors whose best IoU lies in the negative range become background (``0``);
3. anchors whose best IoU is ``>= pos_iou_thr`` take their best gt (lowest index on ties);
4. (``match_low_quality``) each gt whose best IoU is ``>= min_pos_iou`` takes its best
   anchor(s), overwriting steps 2-3. mmdet loops over gts in order, so where several gts claim
   one anchor the LAST gt wins; here that is "the largest gt index claiming the anchor",
   computed in one reduction instead of a Python loop.

mmdet quirks kept on purpose for parity:

- with ``min_pos_iou=0`` a gt that overlaps no anchor (best IoU ``0``) claims every anchor whose
  IoU with it is ``0`` (when ``gt_max_assign_all``), turning them positive;
- anchors inside ignore regions get IoU ``-1`` with every gt, so their ``max_overlaps`` is ``-1``
  (not ``0``) and they stay ignored: ``-1`` is never negative, positive or a claimable best.

IoUs are bitwise equal to mmdet's ``bbox_overlaps`` (see :mod:`.batched_iou`) so the ``==``
tie tests above pick the same anchors.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.task_modules import AssignResult, BaseAssigner
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmengine.structures import InstanceData
from torch import Tensor

from .batched_iou import box_areas, pairwise_overlaps

# IoU given to pairs that must not take part (padded gts, invalid priors): below every real IoU
# and below mmdet's ``-1`` ignore marker, so such pairs never win a max.
_EXCLUDED = -2.0
# Default chunk sizes (IoU values per chunk): large on CUDA to amortise kernel launches, small
# on CPU so the chunk's few float buffers stay in cache across the ~15 elementwise passes.
_CUDA_CHUNK_NUMEL = 2**24
_CPU_CHUNK_NUMEL = 2**20


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


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {value}')
    return value


@TASK_UTILS.register_module()
class RetinaIoUAssigner(BaseAssigner):
    """Assigns each prior to a gt box, background or ignore by IoU (mmdet ``MaxIoUAssigner``).

    Drop-in for ``MaxIoUAssigner`` through :meth:`assign`; :meth:`assign_batch` handles a padded
    batch sharing one prior set without host syncs, materialising at most ``chunk_numel`` IoU
    values at a time.

    Args:
        pos_iou_thr (float): IoU ``>=`` this makes a prior positive. In ``[0, 1]``.
        neg_iou_thr (float | tuple[float, float]): best IoU in ``[0, neg_iou_thr)`` — or in
            ``[lo, hi)`` for a pair — makes a prior background. In ``[0, pos_iou_thr]``,
            ``lo <= hi``.
        min_pos_iou (float): a gt claims its best prior(s) in the low-quality step only if that
            IoU is ``>=`` this. In ``[0, 1]``.
        gt_max_assign_all (bool): in the low-quality step a gt claims every prior tying its best
            IoU (True) or only the first one (False).
        ignore_iof_thr (float): priors whose IoF with an ignore box is ``>`` this are ignored.
            ``<= 0`` disables ignoring; must be ``<= 1``.
        ignore_wrt_candidates (bool): IoF over the prior's area (True) or the ignore box's area.
        match_low_quality (bool): run the low-quality step (step 4).
        chunk_numel (int, optional): most (image, gt, prior) IoU values held at once; priors are
            processed in chunks of ``chunk_numel // (B * max(G, Gi))``. ``>= 1``; None picks
            ``2**24`` on CUDA, ``2**20`` on CPU. Results do not depend on it. Beyond the chunk,
            memory is ``O(B * A)`` plus ``B * G * A / 8`` bytes of tie bits.
    """

    def __init__(self,
                 pos_iou_thr: float = 0.5,
                 neg_iou_thr: Union[float, Tuple[float, float]] = 0.4,
                 min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1.0,
                 ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True,
                 chunk_numel: Optional[int] = None) -> None:
        self.pos_iou_thr = _check_unit('pos_iou_thr', pos_iou_thr)
        if isinstance(neg_iou_thr, Sequence):
            if len(neg_iou_thr) != 2:
                raise ValueError(f'neg_iou_thr must be a float or a (lo, hi) pair, '
                                 f'got {neg_iou_thr!r}')
            lo = _check_unit('neg_iou_thr[0]', neg_iou_thr[0])
            hi = _check_unit('neg_iou_thr[1]', neg_iou_thr[1])
            if not lo <= hi <= self.pos_iou_thr:
                raise ValueError(f'neg_iou_thr=(lo, hi) must satisfy 0 <= lo <= hi <= '
                                 f'pos_iou_thr={self.pos_iou_thr}, got {neg_iou_thr!r}')
            self.neg_iou_thr: Union[float, Tuple[float, float]] = (lo, hi)
        else:
            neg = _check_unit('neg_iou_thr', neg_iou_thr)
            if neg > self.pos_iou_thr:
                raise ValueError(f'neg_iou_thr must be in [0, pos_iou_thr={self.pos_iou_thr}], '
                                 f'got {neg}')
            self.neg_iou_thr = neg
        self.min_pos_iou = _check_unit('min_pos_iou', min_pos_iou)
        ignore_iof_thr = float(ignore_iof_thr)
        if not ignore_iof_thr <= 1.0:  # also rejects NaN
            raise ValueError(f'ignore_iof_thr must be <= 1 (<= 0 disables), got {ignore_iof_thr}')
        self.ignore_iof_thr = ignore_iof_thr
        if chunk_numel is not None and (isinstance(chunk_numel, bool)
                                        or not isinstance(chunk_numel, int) or chunk_numel < 1):
            raise ValueError(f'chunk_numel must be None or an int >= 1, got {chunk_numel!r}')
        self.chunk_numel = chunk_numel
        self.gt_max_assign_all = bool(gt_max_assign_all)
        self.ignore_wrt_candidates = bool(ignore_wrt_candidates)
        self.match_low_quality = bool(match_low_quality)

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               gt_instances_ignore: Optional[InstanceData] = None,
               **kwargs) -> AssignResult:
        """Assigns the priors of one image (mmdet's ``BaseAssigner`` interface).

        Args:
            pred_instances (InstanceData): ``priors``: ``(A, 4)`` x1y1x2y2 anchors/proposals.
            gt_instances (InstanceData): ``bboxes``: ``(G, 4)`` x1y1x2y2 (tensor or mmdet box
                type); ``labels``: ``(G,)`` long class ids.
            gt_instances_ignore (InstanceData, optional): ``bboxes``: ``(Gi, 4)`` ignore regions.

        Returns:
            AssignResult: ``num_gts=G``; ``gt_inds`` ``(A,)`` (0 background, -1 ignored, k > 0
            gt k-1), ``max_overlaps`` ``(A,)``, ``labels`` ``(A,)`` (-1 where not positive).
        """
        priors = get_box_tensor(pred_instances.priors)
        gt_bboxes = get_box_tensor(gt_instances.bboxes)
        gt_labels = gt_instances.labels
        ignore = None
        if gt_instances_ignore is not None:
            ignore = get_box_tensor(gt_instances_ignore.bboxes)[None]
        result = self.assign_batch(
            priors, gt_bboxes[None], gt_labels[None],
            gt_labels.new_ones((1, gt_labels.numel()), dtype=torch.bool),
            gt_bboxes_ignore=ignore)
        return AssignResult(num_gts=gt_bboxes.size(0), gt_inds=result.gt_inds[0],
                            max_overlaps=result.max_overlaps[0], labels=result.labels[0])

    def assign_batch(self,
                     priors: Tensor,
                     gt_bboxes: Tensor,
                     gt_labels: Tensor,
                     gt_valid: Tensor,
                     prior_valid: Optional[Tensor] = None,
                     gt_bboxes_ignore: Optional[Tensor] = None,
                     ignore_valid: Optional[Tensor] = None) -> BatchAssignResult:
        """Assigns shared priors in a padded batch; per image equal to :meth:`assign` on the
        image's valid gts and valid priors. No host syncs.

        Args:
            priors (Tensor): ``(A, 4)`` x1y1x2y2 priors shared by all images.
            gt_bboxes (Tensor): ``(B, G, 4)`` x1y1x2y2 gt boxes, padded.
            gt_labels (Tensor): ``(B, G)`` long class ids (padding values unused).
            gt_valid (Tensor): ``(B, G)`` bool, False for padding.
            prior_valid (Tensor, optional): ``(B, A)`` bool, False for priors to treat as
                removed (e.g. outside the image): they never win a gt's best-prior match and get
                ``gt_inds=-1``, ``max_overlaps=0``, ``labels=-1``. Default: all valid.
            gt_bboxes_ignore (Tensor, optional): ``(B, Gi, 4)`` ignore regions, padded.
            ignore_valid (Tensor, optional): ``(B, Gi)`` bool, False for padding. Default: all
                valid.

        Returns:
            BatchAssignResult: ``(B, A)`` ``gt_inds``, ``max_overlaps``, ``labels``.
        """
        num_imgs, num_gts = gt_bboxes.shape[:2]
        num_priors = priors.size(0)
        priors = priors[:, :4]
        gt_bboxes = gt_bboxes[..., :4]
        use_ignore = (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None
                      and gt_bboxes_ignore.numel() > 0 and num_priors > 0)
        if num_gts == 0 or num_priors == 0:
            has_gt = gt_valid.new_zeros((num_imgs, 1))
            max_overlaps = priors.new_zeros((num_imgs, num_priors))
            argmax = low_quality = None
        else:
            if use_ignore:
                gt_bboxes_ignore = gt_bboxes_ignore[..., :4]
                if ignore_valid is None:
                    ignore_valid = gt_bboxes_ignore.new_ones(gt_bboxes_ignore.shape[:2],
                                                             dtype=torch.bool)
            else:
                gt_bboxes_ignore = ignore_valid = None
            has_gt = gt_valid.any(dim=1, keepdim=True)
            max_overlaps, argmax, low_quality = self._reduce_overlaps(
                priors, gt_bboxes, gt_valid, prior_valid, gt_bboxes_ignore, ignore_valid)

        gt_inds = self._gt_inds_from_overlaps(max_overlaps, argmax, low_quality)
        # No gts in an image: everything is background (mmdet skips ignore regions then too).
        gt_inds = torch.where(has_gt, gt_inds, 0)
        max_overlaps = torch.where(has_gt, max_overlaps, 0.0)
        if prior_valid is not None:
            gt_inds = torch.where(prior_valid, gt_inds, -1)
            max_overlaps = torch.where(prior_valid, max_overlaps, 0.0)
        pos = gt_inds > 0
        if num_gts == 0:
            labels = gt_inds.new_full(gt_inds.shape, -1)
        else:
            labels = gt_labels.long().gather(1, (gt_inds - 1).clamp_(min=0))
            labels = torch.where(pos, labels, -1)
        return BatchAssignResult(gt_inds, max_overlaps, labels)

    def _gt_inds_from_overlaps(self, max_overlaps: Tensor, argmax: Optional[Tensor],
                               low_quality: Optional[Tensor]) -> Tensor:
        """Steps 1-4 on reduced overlaps.

        Args:
            max_overlaps (Tensor): ``(B, A)`` best IoU per prior.
            argmax (Tensor, optional): ``(B, A)`` 0-based index of that best gt; None when
                there are no gts (the caller then overwrites the result).
            low_quality (Tensor, optional): ``(B, A)`` long, ``k > 0`` where gt ``k - 1`` claims
                the prior in step 4, else 0; None when step 4 is off.

        Returns:
            Tensor: ``(B, A)`` long gt_inds.
        """
        if isinstance(self.neg_iou_thr, tuple):
            lo, hi = self.neg_iou_thr
        else:
            lo, hi = 0.0, self.neg_iou_thr
        neg = (max_overlaps >= lo) & (max_overlaps < hi)
        gt_inds = torch.where(neg, 0, -1)
        if argmax is None:
            return gt_inds
        gt_inds = torch.where(max_overlaps >= self.pos_iou_thr, argmax + 1, gt_inds)
        if low_quality is not None:
            gt_inds = torch.where(low_quality > 0, low_quality, gt_inds)
        return gt_inds

    def _chunks(self, num_priors: int, width: int, device: torch.device
                ) -> List[Tuple[int, int]]:
        """Prior ranges ``[start, end)`` holding at most ``chunk_numel`` values of width
        ``width`` (= images x max(gts, ignore boxes)) each."""
        numel = self.chunk_numel
        if numel is None:
            numel = _CUDA_CHUNK_NUMEL if device.type == 'cuda' else _CPU_CHUNK_NUMEL
        step = max(1, numel // max(width, 1))
        return [(s, min(s + step, num_priors)) for s in range(0, num_priors, step)]

    def _reduce_overlaps(self, priors: Tensor, gt_bboxes: Tensor, gt_valid: Tensor,
                         prior_valid: Optional[Tensor], ignore: Optional[Tensor],
                         ignore_valid: Optional[Tensor]
                         ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Reduces the ``(B, G, A)`` overlaps in one pass over chunks of priors.

        Each prior gets its best gt; each gt its best IoU over ALL priors. The all-ties
        low-quality step needs ``IoU == best of the gt``, known only after the last chunk, so
        instead of recomputing the IoUs each chunk records, one bit per (gt, prior), whether the
        prior ties the gt's best IoU WITHIN the chunk (``B * G * A / 8`` bytes in all); a bit
        counts at the end iff that chunk best is the gt's overall best.

        Returns:
            tuple: ``max_overlaps`` ``(B, A)`` float, ``argmax`` ``(B, A)`` long (0-based gt),
            ``low_quality`` ``(B, A)`` long (``k > 0``: claimed by gt ``k - 1``) or None.
        """
        num_imgs, num_gts = gt_bboxes.shape[:2]
        num_priors = priors.size(0)
        width = num_imgs * max(num_gts, 0 if ignore is None else ignore.size(1))
        chunks = self._chunks(num_priors, width, priors.device)
        prior_areas = box_areas(priors)
        gt_areas = box_areas(gt_bboxes)
        ties_needed = self.match_low_quality and self.gt_max_assign_all

        max_overlaps = priors.new_empty((num_imgs, num_priors))
        argmax = priors.new_empty((num_imgs, num_priors), dtype=torch.long)
        gt_max = gt_bboxes.new_full((num_imgs, num_gts), -math.inf)
        gt_argmax = gt_bboxes.new_zeros((num_imgs, num_gts), dtype=torch.long)
        if ties_needed:
            ties = priors.new_zeros((num_imgs, -(-num_gts // 8), num_priors), dtype=torch.uint8)
            chunk_gt_max = gt_bboxes.new_empty((len(chunks), num_imgs, num_gts))
        for k, (start, end) in enumerate(chunks):
            ov = pairwise_overlaps(gt_bboxes, priors[None, start:end], 'iou',
                                   area1=gt_areas, area2=prior_areas[None, start:end])
            if ignore is not None:
                ignored = self._ignored_priors(priors[start:end], prior_areas[start:end],
                                               ignore, ignore_valid)
                ov.masked_fill_(ignored[:, None, :], -1.0)  # mmdet: the prior's column = -1
            keep = gt_valid[:, :, None]
            if prior_valid is not None:
                keep = keep & prior_valid[:, None, start:end]
            ov.masked_fill_(~keep, _EXCLUDED)

            max_overlaps[:, start:end], argmax[:, start:end] = ov.max(dim=1)
            c_max, c_arg = ov.max(dim=2)
            # Strict ">" keeps the earliest prior on ties, like one max over all priors.
            better = c_max > gt_max
            gt_max = torch.where(better, c_max, gt_max)
            gt_argmax = torch.where(better, c_arg + start, gt_argmax)
            if ties_needed:
                chunk_gt_max[k] = c_max
                _pack_gt_bits(ov == c_max[:, :, None], out=ties[:, :, start:end])
        if not self.match_low_quality:
            return max_overlaps, argmax, None

        # mmdet: `if gt_max_overlaps[i] >= min_pos_iou` (padded gts sit at _EXCLUDED < 0).
        claims = gt_valid & (gt_max >= self.min_pos_iou)
        low_quality = argmax.new_zeros((num_imgs, num_priors))
        if not self.gt_max_assign_all:
            # Several gts may share a best prior: the largest id (mmdet's last write) wins.
            gt_ids = torch.arange(1, num_gts + 1, device=priors.device)
            return max_overlaps, argmax, low_quality.scatter_reduce_(
                1, gt_argmax, torch.where(claims, gt_ids, 0), 'amax')
        for k, (start, end) in enumerate(chunks):
            live = _pack_gt_bits((claims & (chunk_gt_max[k] == gt_max))[:, :, None])
            low_quality[:, start:end] = _last_gt_bit(ties[:, :, start:end] & live)
        return max_overlaps, argmax, low_quality

    def _ignored_priors(self, priors: Tensor, prior_areas: Tensor, ignore: Tensor,
                        ignore_valid: Tensor) -> Tensor:
        """Priors whose max IoF with the image's ignore boxes exceeds ``ignore_iof_thr``.

        Args:
            priors (Tensor): ``(C, 4)`` priors of one chunk.
            prior_areas (Tensor): ``(C,)`` their areas.
            ignore (Tensor): ``(B, Gi, 4)`` ignore boxes.
            ignore_valid (Tensor): ``(B, Gi)`` bool, False for padding.

        Returns:
            Tensor: ``(B, C)`` bool.
        """
        if self.ignore_wrt_candidates:
            # mmdet: iof(priors, ignore) -> (A, Gi), max over ignore boxes.
            iof = pairwise_overlaps(priors[None], ignore, 'iof', area1=prior_areas[None])
            iof = iof.masked_fill_(~ignore_valid[:, None, :], _EXCLUDED)
            return iof.amax(dim=2) > self.ignore_iof_thr
        # mmdet: iof(ignore, priors) -> (Gi, A), max over ignore boxes.
        iof = pairwise_overlaps(ignore, priors[None], 'iof')
        iof = iof.masked_fill_(~ignore_valid[:, :, None], _EXCLUDED)
        return iof.amax(dim=1) > self.ignore_iof_thr
