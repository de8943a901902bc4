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
tie tests above pick the same anchors. Another ``iou_calculator`` (e.g. ``fp16``) is called
per image exactly as mmdet calls it, and its overlaps go through the same reduction.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.task_modules import AssignResult, BaseAssigner, BboxOverlaps2D
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import ConfigType, OptConfigType
from mmengine.structures import InstanceData
from torch import Tensor

from .batched_iou import box_areas, pairwise_overlaps
from .perm_repeat import check_perm_repeat_cfg, jitter_repeated_boxes

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

    Drop-in for ``MaxIoUAssigner``: the same arguments with the same meaning, and through
    :meth:`assign` the same results. :meth:`assign_batch` handles a padded batch sharing one
    prior set, materialising at most ``chunk_numel`` IoU values at a time and without host syncs
    when the IoU calculator is mmdet's default one (``BboxOverlaps2D`` without ``fp16``, whose
    numbers our batched IoU reproduces bit for bit) and ``perm_repeat_gt_cfg`` is None; any
    other calculator is called per image, as mmdet calls it.

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
        gpu_assign_thr (float): an image with more gts than this is assigned on the CPU and its
            results moved back (saves accelerator memory); ``<= 0`` never moves. In
            :meth:`assign_batch` the whole batch moves when its padded gt count exceeds it (the
            calculator-per-image path decides per image, as mmdet). Results on CPU tensors do
            not depend on it. Moving to the CPU and back makes the host wait for the device.
        iou_calculator (dict): config of the IoU calculator (``TASK_UTILS``), called as
            ``calc(gts, priors)`` and ``calc(a, b, mode='iof')``; e.g.
            ``dict(type='BboxOverlaps2D', scale=512., dtype='fp16')``.
        perm_repeat_gt_cfg (dict, optional): jitter repeated gt boxes before computing IoUs
            (V3Det; see :mod:`.perm_repeat`): ``iou_thr`` in ``[0, 1]``, ``perm_range`` in
            ``[0, 1)``. Draws from the global generator of the assigning device, as mmdet.
        chunk_numel (int, optional): most (image, gt, prior) IoU values held at once by the
            batched path; priors are processed in chunks of ``chunk_numel // (B * max(G, Gi))``.
            ``>= 1``; None picks ``2**24`` on CUDA, ``2**20`` on CPU. Results do not depend on
            it. Beyond the chunk, memory is ``O(B * A)`` plus ``B * G * A / 8`` bytes of tie bits.
    """

    def __init__(self,
                 pos_iou_thr: float = 0.5,
                 neg_iou_thr: Union[float, Tuple[float, float]] = 0.4,
                 min_pos_iou: float = 0.0,
                 gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1.0,
                 ignore_wrt_candidates: bool = True,
                 match_low_quality: bool = True,
                 gpu_assign_thr: float = -1,
                 iou_calculator: ConfigType = dict(type='BboxOverlaps2D'),
                 perm_repeat_gt_cfg: OptConfigType = None,
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
        if isinstance(gpu_assign_thr, bool) or not isinstance(gpu_assign_thr, (int, float)) \
                or math.isnan(gpu_assign_thr):
            raise ValueError(f'gpu_assign_thr must be a number (<= 0 disables), '
                             f'got {gpu_assign_thr!r}')
        self.gpu_assign_thr = gpu_assign_thr
        if not (isinstance(iou_calculator, Mapping) and 'type' in iou_calculator):
            raise ValueError(f'iou_calculator must be a config dict with a type, e.g. '
                             f"dict(type='BboxOverlaps2D'), got {iou_calculator!r}")
        self.iou_calculator = TASK_UTILS.build(iou_calculator)
        # Only mmdet's plain BboxOverlaps2D is bitwise equal to our batched IoU; 'fp16' casts.
        self.batched_iou = (type(self.iou_calculator) is BboxOverlaps2D
                            and self.iou_calculator.dtype != 'fp16')
        self.perm_repeat_gt_cfg = check_perm_repeat_cfg(perm_repeat_gt_cfg)
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
            **kwargs: unused; part of mmdet's interface.

        Returns:
            AssignResult: ``num_gts=G``; ``gt_inds`` ``(A,)`` (0 background, -1 ignored, k > 0
            gt k-1), ``max_overlaps`` ``(A,)``, ``labels`` ``(A,)`` (-1 where not positive).
        """
        gt_bboxes = get_box_tensor(gt_instances.bboxes)
        ignore = None
        if gt_instances_ignore is not None:
            ignore = get_box_tensor(gt_instances_ignore.bboxes)
        gt_inds, max_overlaps, labels = self._assign_image(
            get_box_tensor(pred_instances.priors), gt_bboxes, gt_instances.labels, ignore)
        return AssignResult(num_gts=gt_bboxes.size(0), gt_inds=gt_inds,
                            max_overlaps=max_overlaps, labels=labels)

    def assign_batch(self,
                     priors: Tensor,
                     gt_bboxes: Tensor,
                     gt_labels: Tensor,
                     gt_valid: Tensor,
                     prior_valid: Optional[Tensor] = None,
                     gt_bboxes_ignore: Optional[Tensor] = None,
                     ignore_valid: Optional[Tensor] = None) -> BatchAssignResult:
        """Assigns shared priors in a padded batch; per image equal to :meth:`assign` on the
        image's valid gts and valid priors.

        Without host syncs (shapes follow from the inputs' alone) for the default calculator
        in every mode it batches (chunks, ignore regions, low-quality matches with or without
        ``gt_max_assign_all``), unless ``gpu_assign_thr`` moves the batch to the CPU. Other
        calculators run per image, and ``perm_repeat_gt_cfg`` jitters each image's gts first,
        in image order, on each image's valid gts and priors (boolean indexing: the host waits
        for the device).

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
        if not self.batched_iou:
            return self._assign_per_image(priors, gt_bboxes, gt_labels, gt_valid, prior_valid,
                                          gt_bboxes_ignore, ignore_valid)
        if self.perm_repeat_gt_cfg is not None:
            # before any move: each image draws on the device mmdet would draw on
            gt_bboxes = self._jitter_batch(priors, gt_bboxes, gt_valid, prior_valid)
        args = (priors, gt_bboxes, gt_labels, gt_valid, prior_valid, gt_bboxes_ignore,
                ignore_valid)
        device = priors.device
        if self._on_cpu(gt_bboxes.size(1)) and device.type != 'cpu':
            result = self._assign_batched_iou(*(None if t is None else t.cpu() for t in args))
            return BatchAssignResult(*(t.to(device) for t in result))
        return self._assign_batched_iou(*args)

    def _on_cpu(self, num_gts: int) -> bool:
        """mmdet's rule: assign on the CPU when there are more gts than ``gpu_assign_thr``."""
        return self.gpu_assign_thr > 0 and num_gts > self.gpu_assign_thr

    def _jitter(self, priors: Tensor, gt_bboxes: Tensor) -> Tensor:
        """``gt_bboxes`` of one image with repeated boxes jittered, where mmdet does it."""
        if self.perm_repeat_gt_cfg is None or priors.numel() == 0:
            return gt_bboxes
        return jitter_repeated_boxes(gt_bboxes, self.iou_calculator, **self.perm_repeat_gt_cfg)

    def _jitter_batch(self, priors: Tensor, gt_bboxes: Tensor, gt_valid: Tensor,
                      prior_valid: Optional[Tensor]) -> Tensor:
        """:meth:`_jitter` on each image's valid gts in image order, each on the device mmdet
        would use (its draws come from that device's generator)."""
        gt_bboxes = gt_bboxes.clone()
        for i in range(gt_bboxes.size(0)):
            boxes = gt_bboxes[i, gt_valid[i]]
            image_priors = priors if prior_valid is None else priors[prior_valid[i]]
            if self._on_cpu(boxes.size(0)):
                boxes, image_priors = boxes.cpu(), image_priors.cpu()
            gt_bboxes[i, gt_valid[i]] = self._jitter(image_priors, boxes).to(gt_bboxes)
        return gt_bboxes

    def _assign_image(self, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                      ignore: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """mmdet's ``MaxIoUAssigner.assign`` on plain tensors of one image.

        Args:
            priors (Tensor): ``(A, 4)``.
            gt_bboxes (Tensor): ``(G, 4)``.
            gt_labels (Tensor): ``(G,)``.
            ignore (Tensor, optional): ``(Gi, 4)`` ignore regions.

        Returns:
            tuple[Tensor]: ``gt_inds``, ``max_overlaps``, ``labels``, each ``(A,)``, on the
            device of ``priors``.
        """
        device = priors.device
        if self._on_cpu(gt_bboxes.size(0)):
            priors, gt_bboxes, gt_labels = priors.cpu(), gt_bboxes.cpu(), gt_labels.cpu()
            ignore = None if ignore is None else ignore.cpu()
        gt_bboxes = self._jitter(priors, gt_bboxes)
        if self.batched_iou:
            result = self._assign_batched_iou(
                priors, gt_bboxes[None], gt_labels[None],
                gt_labels.new_ones((1, gt_labels.numel()), dtype=torch.bool),
                gt_bboxes_ignore=None if ignore is None else ignore[None])
        else:
            result = self._assign_calculator_overlaps(priors, gt_bboxes, gt_labels, ignore)
        return tuple(t[0].to(device) for t in result)

    def _assign_per_image(self, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                          gt_valid: Tensor, prior_valid: Optional[Tensor],
                          gt_bboxes_ignore: Optional[Tensor], ignore_valid: Optional[Tensor]
                          ) -> BatchAssignResult:
        """:meth:`assign_batch` by :meth:`_assign_image` on each image's valid gts, valid
        priors and valid ignore boxes, scattered back to the padded layout."""
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
            gt_inds, max_overlaps, labels = self._assign_image(
                priors[prior_valid[i]], gt_bboxes[i, gt_valid[i]], gt_labels[i, gt_valid[i]],
                ignore)
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

    def _assign_calculator_overlaps(self, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                                    ignore: Optional[Tensor]) -> BatchAssignResult:
        """One image through ``self.iou_calculator``, called as mmdet calls it.

        Returns:
            BatchAssignResult: ``(1, A)`` tensors.
        """
        overlaps = self.iou_calculator(gt_bboxes, priors)
        num_gts, num_priors = overlaps.shape
        if self._uses_ignore(ignore, num_priors):
            if self.ignore_wrt_candidates:
                ignored = self.iou_calculator(priors, ignore, mode='iof').amax(dim=1)
            else:
                ignored = self.iou_calculator(ignore, priors, mode='iof').amax(dim=0)
            overlaps[:, ignored > self.ignore_iof_thr] = -1  # mmdet: the prior's column = -1
        gt_valid = gt_labels.new_ones((1, num_gts), dtype=torch.bool)
        if num_gts == 0 or num_priors == 0:
            return self._finish(overlaps.new_zeros((1, num_priors)), None, None, gt_valid,
                                None, gt_labels[None])
        reduced = self._reduce_overlaps(lambda start, end: overlaps[None, :, start:end],
                                        [(0, num_priors)], gt_valid)
        return self._finish(*reduced, gt_valid, None, gt_labels[None])

    def _uses_ignore(self, ignore: Optional[Tensor], num_priors: int) -> bool:
        """mmdet's condition for looking at ignore regions at all."""
        return (self.ignore_iof_thr > 0 and ignore is not None and ignore.numel() > 0
                and num_priors > 0)

    def _assign_batched_iou(self, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                            gt_valid: Tensor, prior_valid: Optional[Tensor] = None,
                            gt_bboxes_ignore: Optional[Tensor] = None,
                            ignore_valid: Optional[Tensor] = None) -> BatchAssignResult:
        """:meth:`assign_batch` with our batched IoU, chunked over priors; no host syncs."""
        num_imgs, num_gts = gt_bboxes.shape[:2]
        num_priors = priors.size(0)
        priors = priors[:, :4]
        gt_bboxes = gt_bboxes[..., :4]
        if num_gts == 0 or num_priors == 0:
            dtype = torch.promote_types(priors.dtype, gt_bboxes.dtype)
            return self._finish(priors.new_zeros((num_imgs, num_priors), dtype=dtype), None,
                                None, gt_valid, prior_valid, gt_labels)
        ignore = None
        if self._uses_ignore(gt_bboxes_ignore, num_priors):
            ignore = gt_bboxes_ignore[..., :4]
            if ignore_valid is None:
                ignore_valid = ignore.new_ones(ignore.shape[:2], dtype=torch.bool)
        width = num_imgs * max(num_gts, 0 if ignore is None else ignore.size(1))
        prior_areas = box_areas(priors)
        gt_areas = box_areas(gt_bboxes)

        def overlaps_of(start: int, end: int) -> Tensor:
            ov = pairwise_overlaps(gt_bboxes, priors[None, start:end], 'iou',
                                   area1=gt_areas, area2=prior_areas[None, start:end])
            if ignore is not None:
                ignored = self._ignored_priors(priors[start:end], prior_areas[start:end],
                                               ignore, ignore_valid)
                ov.masked_fill_(ignored[:, None, :], -1.0)  # mmdet: the prior's column = -1
            keep = gt_valid[:, :, None]
            if prior_valid is not None:
                keep = keep & prior_valid[:, None, start:end]
            return ov.masked_fill_(~keep, _EXCLUDED)

        reduced = self._reduce_overlaps(overlaps_of,
                                        self._chunks(num_priors, width, priors.device), gt_valid)
        return self._finish(*reduced, gt_valid, prior_valid, gt_labels)

    def _finish(self, max_overlaps: Tensor, argmax: Optional[Tensor],
                low_quality: Optional[Tensor], gt_valid: Tensor, prior_valid: Optional[Tensor],
                gt_labels: Tensor) -> BatchAssignResult:
        """Steps 1-4 on reduced overlaps, then images without gts and removed priors.

        Args:
            max_overlaps (Tensor): ``(B, A)`` best IoU per prior.
            argmax (Tensor, optional): ``(B, A)`` 0-based index of that best gt; None when
                there are no gts or priors.
            low_quality (Tensor, optional): ``(B, A)`` long, ``k > 0`` where gt ``k - 1`` claims
                the prior in step 4, else 0; None when step 4 is off.
            gt_valid (Tensor): ``(B, G)`` bool.
            prior_valid (Tensor, optional): ``(B, A)`` bool.
            gt_labels (Tensor): ``(B, G)`` class ids.

        Returns:
            BatchAssignResult: ``(B, A)`` tensors.
        """
        gt_inds = self._gt_inds_from_overlaps(max_overlaps, argmax, low_quality)
        # No gts in an image: everything is background (mmdet skips ignore regions then too).
        has_gt = gt_valid.any(dim=1, keepdim=True)
        gt_inds = torch.where(has_gt, gt_inds, 0)
        max_overlaps = torch.where(has_gt, max_overlaps, 0.0)
        if prior_valid is not None:
            gt_inds = torch.where(prior_valid, gt_inds, -1)
            max_overlaps = torch.where(prior_valid, max_overlaps, 0.0)
        if gt_labels.size(1) == 0:
            labels = gt_inds.new_full(gt_inds.shape, -1)
        else:
            labels = gt_labels.long().gather(1, (gt_inds - 1).clamp_(min=0))
            labels = torch.where(gt_inds > 0, labels, -1)
        return BatchAssignResult(gt_inds, max_overlaps, labels)

    def _gt_inds_from_overlaps(self, max_overlaps: Tensor, argmax: Optional[Tensor],
                               low_quality: Optional[Tensor]) -> Tensor:
        """Steps 1-4: ``(B, A)`` long gt_inds (arguments as in :meth:`_finish`)."""
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

    def _reduce_overlaps(self, overlaps_of: Callable[[int, int], Tensor],
                         chunks: List[Tuple[int, int]], gt_valid: Tensor
                         ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Reduces the ``(B, G, A)`` overlaps in one pass over chunks of priors.

        Each prior gets its best gt; each gt its best IoU over ALL priors. The all-ties
        low-quality step needs ``IoU == best of the gt``, known only after the last chunk, so
        instead of recomputing the IoUs each chunk records, one bit per (gt, prior), whether the
        prior ties the gt's best IoU WITHIN the chunk (``B * G * A / 8`` bytes in all); a bit
        counts at the end iff that chunk best is the gt's overall best.

        Args:
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
        ties_needed = self.match_low_quality and self.gt_max_assign_all
        argmax = torch.empty((num_imgs, num_priors), dtype=torch.long, device=device)
        gt_argmax = argmax.new_zeros((num_imgs, num_gts))
        if ties_needed:
            ties = argmax.new_zeros((num_imgs, -(-num_gts // 8), num_priors), dtype=torch.uint8)
        for k, (start, end) in enumerate(chunks):
            ov = overlaps_of(start, end)
            if k == 0:  # the overlaps' dtype: the boxes', or the calculator's
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
        if not self.match_low_quality:
            return max_overlaps, argmax, None

        # mmdet: `if gt_max_overlaps[i] >= min_pos_iou` (padded gts sit at _EXCLUDED < 0).
        claims = gt_valid & (gt_max >= self.min_pos_iou)
        low_quality = argmax.new_zeros((num_imgs, num_priors))
        if not self.gt_max_assign_all:
            # Several gts may share a best prior: the largest id (mmdet's last write) wins.
            gt_ids = torch.arange(1, num_gts + 1, device=device)
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
