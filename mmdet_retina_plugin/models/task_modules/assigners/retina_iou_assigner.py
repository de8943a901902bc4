"""``RetinaIoUAssigner``: mmdet's ``MaxIoUAssigner`` as a registered module, with a batched path.

The rule itself is :mod:`.max_iou_rule` (one image, plain torch) and its batched, chunked form
:mod:`.batched_max_iou`; this module checks the arguments and picks the path:

- :meth:`RetinaIoUAssigner.assign` (mmdet's interface, one image) runs the single-image rule
  with the configured ``iou_calculator``, as mmdet's ``MaxIoUAssigner.assign`` does (the plain
  ``BboxOverlaps2D`` computed by :func:`.batched_iou.pairwise_overlaps`, equal and leaner);
- :meth:`RetinaIoUAssigner.assign_batch` (a padded batch sharing one prior set, what
  ``RetinaNetHead``'s loss calls) runs the batched path when its IoUs equal the calculator's
  bit for bit (mmdet's plain ``BboxOverlaps2D``) and no gts are jittered, else the single-image
  rule on each image.

Either way, "assign on the CPU when there are more gts than ``gpu_assign_thr``" is decided in
one place, :meth:`RetinaIoUAssigner._on_assign_device`.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

from mmdet.models.task_modules import AssignResult, BaseAssigner, BboxOverlaps2D
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import ConfigType, OptConfigType
from mmengine.structures import InstanceData
from torch import Tensor

from ....utils.errors import RetinaConfigError
from .batched_iou import pairwise_overlaps
from .batched_max_iou import BatchAssignResult, assign_batched
from .max_iou_rule import MaxIoURule, max_iou_assign
from .per_image import assign_per_image
from .perm_repeat import check_perm_repeat_cfg, jitter_repeated_boxes


def _plain_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = 'iou') -> Tensor:
    """mmdet's plain ``BboxOverlaps2D`` bit for bit, with a third of its temporaries.

    Args:
        boxes1 (Tensor): ``(M, 4)`` or ``(M, 5)`` boxes (the 5th column is dropped, as mmdet).
        boxes2 (Tensor): ``(N, 4)`` or ``(N, 5)`` boxes.
        mode (str): ``'iou'`` or ``'iof'``.

    Returns:
        Tensor: ``(M, N)``.
    """
    return pairwise_overlaps(boxes1[..., :4], boxes2[..., :4], mode)


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise RetinaConfigError(f'{name} must be in [0, 1], got {value}')
    return value


def _check_neg_iou_thr(neg_iou_thr: Union[float, Sequence[float]], pos_iou_thr: float
                       ) -> Union[float, Tuple[float, float]]:
    """``neg_iou_thr`` as a float or a ``(lo, hi)`` tuple, checked against ``pos_iou_thr``."""
    if not isinstance(neg_iou_thr, Sequence):
        neg = _check_unit('neg_iou_thr', neg_iou_thr)
        if neg > pos_iou_thr:
            raise RetinaConfigError(f'neg_iou_thr must be in [0, pos_iou_thr={pos_iou_thr}], '
                                    f'got {neg}')
        return neg
    if len(neg_iou_thr) != 2:
        raise RetinaConfigError(f'neg_iou_thr must be a float or a (lo, hi) pair, '
                                f'got {neg_iou_thr!r}')
    lo = _check_unit('neg_iou_thr[0]', neg_iou_thr[0])
    hi = _check_unit('neg_iou_thr[1]', neg_iou_thr[1])
    if not lo <= hi <= pos_iou_thr:
        raise RetinaConfigError(f'neg_iou_thr=(lo, hi) must satisfy 0 <= lo <= hi <= '
                                f'pos_iou_thr={pos_iou_thr}, got {neg_iou_thr!r}')
    return lo, hi


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
        match_low_quality (bool): run the low-quality step.
        gpu_assign_thr (float): an image with more gts than this is assigned on the CPU and its
            results moved back (saves accelerator memory); ``<= 0`` never moves. On the batched
            path the whole batch moves when its padded gt count exceeds it (the per-image path
            decides per image, as mmdet). Results on CPU tensors do not depend on it. Moving to
            the CPU and back makes the host wait for the device.
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
        self.neg_iou_thr = _check_neg_iou_thr(neg_iou_thr, self.pos_iou_thr)
        self.min_pos_iou = _check_unit('min_pos_iou', min_pos_iou)
        self.gt_max_assign_all = bool(gt_max_assign_all)
        ignore_iof_thr = float(ignore_iof_thr)
        if not ignore_iof_thr <= 1.0:  # also rejects NaN
            raise RetinaConfigError(f'ignore_iof_thr must be <= 1 (<= 0 disables), '
                                    f'got {ignore_iof_thr}')
        self.ignore_iof_thr = ignore_iof_thr
        self.ignore_wrt_candidates = bool(ignore_wrt_candidates)
        self.match_low_quality = bool(match_low_quality)
        if isinstance(gpu_assign_thr, bool) or not isinstance(gpu_assign_thr, (int, float)) \
                or math.isnan(gpu_assign_thr):
            raise RetinaConfigError(f'gpu_assign_thr must be a number (<= 0 disables), '
                                    f'got {gpu_assign_thr!r}')
        self.gpu_assign_thr = gpu_assign_thr
        if not (isinstance(iou_calculator, Mapping) and 'type' in iou_calculator):
            raise RetinaConfigError(f'iou_calculator must be a config dict with a type, e.g. '
                                    f"dict(type='BboxOverlaps2D'), got {iou_calculator!r}")
        self.iou_calculator = TASK_UTILS.build(iou_calculator)
        # Only mmdet's plain BboxOverlaps2D is bitwise equal to our batched IoU; 'fp16' casts.
        self.batched_iou = (type(self.iou_calculator) is BboxOverlaps2D
                            and self.iou_calculator.dtype != 'fp16')
        self.perm_repeat_gt_cfg = check_perm_repeat_cfg(perm_repeat_gt_cfg)
        if chunk_numel is not None and (isinstance(chunk_numel, bool)
                                        or not isinstance(chunk_numel, int) or chunk_numel < 1):
            raise RetinaConfigError(f'chunk_numel must be None or an int >= 1, '
                                    f'got {chunk_numel!r}')
        self.chunk_numel = chunk_numel

    @property
    def rule(self) -> MaxIoURule:
        """The thresholds as :class:`~.max_iou_rule.MaxIoURule` (from the attributes, which
        keep mmdet's names)."""
        neg = self.neg_iou_thr
        return MaxIoURule(self.pos_iou_thr, neg if isinstance(neg, tuple) else (0.0, neg),
                          self.min_pos_iou, self.gt_max_assign_all, self.match_low_quality,
                          self.ignore_iof_thr, self.ignore_wrt_candidates)

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
        gt_inds, max_overlaps, labels = self._on_assign_device(
            gt_bboxes.size(0), self._assign_image, get_box_tensor(pred_instances.priors),
            gt_bboxes, gt_instances.labels, ignore)
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
        calculators, and ``perm_repeat_gt_cfg`` (which jitters each image's gts in image order),
        run :meth:`assign`'s rule image by image on each image's valid gts and priors (boolean
        indexing: the host waits for the device).

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
        if not self.batched_iou or self.perm_repeat_gt_cfg is not None:
            def assign_image(image_priors: Tensor, boxes: Tensor, labels: Tensor,
                             ignore: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
                return self._on_assign_device(boxes.size(0), self._assign_image, image_priors,
                                              boxes, labels, ignore)
            return assign_per_image(assign_image, priors, gt_bboxes, gt_labels, gt_valid,
                                    prior_valid, gt_bboxes_ignore, ignore_valid)
        batched = functools.partial(assign_batched, self.rule, chunk_numel=self.chunk_numel)
        return BatchAssignResult(*self._on_assign_device(
            gt_bboxes.size(1), batched, priors, gt_bboxes, gt_labels, gt_valid, prior_valid,
            gt_bboxes_ignore, ignore_valid))

    def _on_assign_device(self, num_gts: int, assign: Callable[..., Tuple[Tensor, ...]],
                          priors: Tensor, *tensors: Optional[Tensor]) -> Tuple[Tensor, ...]:
        """``assign(priors, *tensors)``, run on the CPU when there are more than
        ``gpu_assign_thr`` gts (mmdet's rule: it saves accelerator memory), with its results
        moved back to the device of ``priors``.

        Args:
            num_gts (int): the gt count the rule looks at (per image, or the padded count).
            assign (Callable): returns a tuple of tensors.
            priors (Tensor): ``(A, 4)``; its device is where the results go.
            *tensors (Tensor, optional): the other arguments of ``assign``.

        Returns:
            tuple[Tensor, ...]: what ``assign`` returns, on the device of ``priors``.
        """
        device = priors.device
        if not (self.gpu_assign_thr > 0 and num_gts > self.gpu_assign_thr) \
                or device.type == 'cpu':
            return tuple(assign(priors, *tensors))
        result = assign(priors.cpu(), *(None if t is None else t.cpu() for t in tensors))
        return tuple(t.to(device) for t in result)

    def _assign_image(self, priors: Tensor, gt_bboxes: Tensor, gt_labels: Tensor,
                      ignore: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """mmdet's ``MaxIoUAssigner.assign`` on plain tensors of one image, on their device:
        repeated gts jittered (``perm_repeat_gt_cfg``), then the rule with the calculator (the
        plain ``BboxOverlaps2D`` computed by our equal, leaner IoU).

        Args:
            priors (Tensor): ``(A, 4)``.
            gt_bboxes (Tensor): ``(G, 4)``.
            gt_labels (Tensor): ``(G,)``.
            ignore (Tensor, optional): ``(Gi, 4)`` ignore regions.

        Returns:
            tuple[Tensor, Tensor, Tensor]: ``gt_inds``, ``max_overlaps``, ``labels``, each
            ``(A,)`` (see :func:`~.max_iou_rule.max_iou_assign`).
        """
        if self.perm_repeat_gt_cfg is not None and priors.numel() > 0:
            gt_bboxes = jitter_repeated_boxes(gt_bboxes, self.iou_calculator,
                                              **self.perm_repeat_gt_cfg)
        return max_iou_assign(self.rule, priors, gt_bboxes, gt_labels, ignore,
                              _plain_overlaps if self.batched_iou else self.iou_calculator)
