"""Per-level anchor assignment statistics during training (positives / ignored / negatives).

The numbers come from the head's own target code, called as its ``loss_by_feat`` calls it, so
they are what the loss saw: for ``RetinaNetHead`` its anchor cache and ``get_batch_targets``;
for mmdet's anchor heads (``RetinaHead``, ``AnchorHead``) their ``get_anchors`` and
``get_targets``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from mmdet.models.task_modules.prior_generators import anchor_inside_flags
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import HOOKS
from mmdet.structures.bbox import bbox_overlaps, cat_boxes, get_box_tensor
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import Tensor, nn

from ...models.dense_heads.retina_targets import assigned_boxes
from ...utils.errors import RetinaConfigError


def level_names(strides: Sequence[Any]) -> List[str]:
    """``P{log2(stride)}`` per level (P3..P7 for RetinaNet), ``L{i}`` for other strides.

    Args:
        strides: per level an int or an ``(sw, sh)`` pair (mmdet ``AnchorGenerator.strides``).
    """
    names = []
    for i, stride in enumerate(strides):
        s = stride if isinstance(stride, (int, float)) else stride[0]
        names.append(f'P{int(math.log2(s))}' if s > 0 and math.log2(s).is_integer() else f'L{i}')
    return names


class AnchorOutcomes(NamedTuple):
    """What a batch's training targets made of each of the ``A`` anchors of ``B`` images.

    Attributes:
        level_sizes (List[int]): anchors per level, summing to ``A``.
        pos (Tensor): ``(B, A)`` bool, positives.
        ignored (Tensor): ``(B, A)`` bool, anchors taking part but neither positive nor negative
            (assigned -1: IoU in ``[neg_iou_thr, pos_iou_thr)``, or an ignore region).
        neg (Tensor): ``(B, A)`` bool, negatives. Anchors in no mask took no part (outside
            the image's padding or border).
        pos_anchor (Tensor): ``(P,)`` long, the anchor index in ``[0, A)`` of each positive.
        pos_iou (Tensor): ``(P,)`` IoU of each positive with its gt box.
    """

    level_sizes: List[int]
    pos: Tensor
    ignored: Tensor
    neg: Tensor
    pos_anchor: Tensor
    pos_iou: Tensor


def _batched_head_outcomes(head: nn.Module, featmap_sizes: Sequence[Tuple[int, int]],
                           gts: list, ignores: list, metas: List[dict], device: torch.device
                           ) -> AnchorOutcomes:
    """``RetinaNetHead``: the anchors, valid flags and targets its ``loss_by_feat`` builds,
    by the same calls."""
    anchors, level_anchors, valid = head.training_anchors(featmap_sizes, metas, device)
    targets = head.get_batch_targets(anchors, valid, gts, metas, ignores)
    pos = targets.gt_inds > 0
    _, pos_anchor = pos.nonzero(as_tuple=True)
    # the boxes the box loss regresses the positives to
    pos_iou = bbox_overlaps(anchors[pos_anchor], assigned_boxes(targets, anchors)[pos],
                            is_aligned=True)
    return AnchorOutcomes([len(a) for a in level_anchors], pos,
                          targets.anchor_valid & (targets.gt_inds < 0), targets.gt_inds == 0,
                          pos_anchor, pos_iou)


def _mmdet_head_outcomes(head: nn.Module, featmap_sizes: Sequence[Tuple[int, int]],
                         gts: list, ignores: list, metas: List[dict], device: torch.device
                         ) -> AnchorOutcomes:
    """mmdet's ``AnchorHead``: its ``get_anchors`` and ``get_targets``, as its
    ``loss_by_feat`` calls them, read through their sampling results."""
    anchor_list, valid_list = head.get_anchors(featmap_sizes, metas, device=device)
    sampling_results = head.get_targets(anchor_list, valid_list, gts, metas, ignores,
                                        return_sampling_results=True)[5]
    anchors = get_box_tensor(cat_boxes(anchor_list[0]))  # the same for every image
    pos = anchors.new_zeros((len(metas), anchors.size(0)), dtype=torch.bool)
    neg, inside = pos.clone(), pos.clone()
    pos_anchor, pos_iou = [], []
    for i, (res, valid, meta) in enumerate(zip(sampling_results, valid_list, metas)):
        # The sampling results index the anchors kept inside the border, which get_targets
        # does not return: the same anchor_inside_flags call as its _get_targets_single.
        inside[i] = anchor_inside_flags(anchors, torch.cat(valid), meta['img_shape'][:2],
                                        head.train_cfg['allowed_border'])
        kept = inside[i].nonzero().squeeze(1)
        pos[i, kept[res.pos_inds]] = True
        neg[i, kept[res.neg_inds]] = True
        pos_anchor.append(kept[res.pos_inds])
        pos_iou.append(bbox_overlaps(get_box_tensor(res.pos_priors),
                                     get_box_tensor(res.pos_gt_bboxes), is_aligned=True))
    return AnchorOutcomes([len(a) for a in anchor_list[0]], pos, inside & ~pos & ~neg, neg,
                          torch.cat(pos_anchor), torch.cat(pos_iou))


def _uses_batched_targets(head: nn.Module) -> bool:
    return hasattr(head, 'training_anchors') and hasattr(head, 'get_batch_targets')


def _uses_mmdet_targets(head: nn.Module) -> bool:
    return hasattr(head, 'get_anchors') and hasattr(head, 'get_targets')


def assignment_stats(head: nn.Module, featmap_sizes: Sequence[Tuple[int, int]],
                     batch_data_samples: Sequence[Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Builds the batch's training targets with the head's own code, and counts per level.

    Args:
        head (nn.Module): the detector's ``bbox_head``, built with a ``train_cfg``: our
            ``RetinaNetHead`` or an mmdet anchor head (``RetinaHead``, ``AnchorHead``).
        featmap_sizes (Sequence[Tuple[int, int]]): ``(Hi, Wi)`` of each level the head saw.
        batch_data_samples (Sequence[Any]): preprocessed ``DetDataSample`` s with
            ``gt_instances`` (``bboxes`` ``(Gi, 4)`` in input pixels, ``labels`` ``(Gi,)``),
            optional ``ignored_instances``, and ``pad_shape`` / ``img_shape`` metainfo.

    Returns:
        Dict[str, Dict[str, Optional[float]]]: ``{level: {pos, ignored, neg, pos_iou}}`` for
        each level name and ``'all'``: anchor counts per image (mean over the batch;
        ``ignored`` = assigned -1, e.g. IoU in ``[neg_iou_thr, pos_iou_thr)``; anchors outside
        the image's padding or border are in no count) and the mean IoU between positives and
        their gt (``None`` without positives).
    """
    gts, ignores, metas = unpack_gt_instances(batch_data_samples)
    device = next(head.parameters()).device
    outcomes_of = _batched_head_outcomes if _uses_batched_targets(head) else _mmdet_head_outcomes
    out = outcomes_of(head, featmap_sizes, gts, ignores, metas, device)
    num_levels = len(out.level_sizes)
    level = torch.repeat_interleave(torch.arange(num_levels, device=device),
                                    torch.tensor(out.level_sizes, device=device))
    counts = torch.stack([torch.bincount(level.expand_as(mask)[mask], minlength=num_levels)
                          for mask in (out.pos, out.ignored, out.neg)]).double()
    iou_sum = torch.bincount(level[out.pos_anchor], weights=out.pos_iou.double(),
                             minlength=num_levels)
    num_images = max(len(gts), 1)
    names = level_names(head.prior_generator.strides)
    stats = {}
    for key, c, s in [(names[i], counts[:, i], iou_sum[i]) for i in range(num_levels)] + [
            ('all', counts.sum(1), iou_sum.sum())]:
        stats[key] = dict(pos=float(c[0]) / num_images, ignored=float(c[1]) / num_images,
                          neg=float(c[2]) / num_images,
                          pos_iou=float(s / c[0]) if c[0] > 0 else None)
    return stats


@HOOKS.register_module()
class RetinaAssignStatsHook(Hook):
    """Logs per pyramid level the positives / ignored / negatives per image and the mean IoU
    of positives, every ``interval`` training iterations.

    The hook records, without copying, what the model saw: the preprocessed ``data_samples``
    (forward pre-hook on the detector, ``mode='loss'``) and the feature sizes (forward pre-hook on
    ``bbox_head``). After the iteration it builds the training targets from them with the head's
    own target code (see :func:`assignment_stats`): ``RetinaNetHead`` or any mmdet anchor head.
    Scalars go to the MessageHub as ``train/assign/<level>_<stat>``; the ``LoggerHook`` then
    writes them to the log and to the visualizer backends (TensorBoard when configured). A
    one-line summary also goes to the logger.

    Args:
        interval: iterations between two measurements (>= 1).
        log_text: also print the per-level summary through ``runner.logger``.
    """

    priority = 'NORMAL'  # before the LoggerHook (BELOW_NORMAL) of the same iteration

    def __init__(self, interval: int = 50, log_text: bool = True) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise RetinaConfigError(f'interval must be an int >= 1, got {interval!r}')
        self.interval = interval
        self.log_text = log_text
        self._capture = False
        self._featmap_sizes: Optional[List[Tuple[int, int]]] = None
        self._data_samples: Optional[list] = None
        self._handles: list = []
        self.last_stats: Optional[Dict[str, Dict[str, Optional[float]]]] = None

    @staticmethod
    def _detector(runner) -> nn.Module:
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def before_train(self, runner) -> None:
        detector = self._detector(runner)
        head = getattr(detector, 'bbox_head', None)
        if not (hasattr(head, 'prior_generator') and hasattr(head, 'assigner')
                and (_uses_batched_targets(head) or _uses_mmdet_targets(head))):
            raise RetinaConfigError(
                'RetinaAssignStatsHook needs model.bbox_head to be an anchor head built with a '
                "train_cfg (RetinaNetHead, or mmdet's RetinaHead / AnchorHead), got "
                f'{type(head).__name__}')
        self._handles = [
            detector.register_forward_pre_hook(self._record_samples, with_kwargs=True),
            head.register_forward_pre_hook(self._record_featmaps)]

    def _record_samples(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._capture and kwargs.get('mode') == 'loss':
            self._data_samples = kwargs.get('data_samples')

    def _record_featmaps(self, module: nn.Module, args: tuple) -> None:
        if self._capture:
            self._featmap_sizes = [tuple(f.shape[-2:]) for f in args[0]]

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._capture = self.every_n_train_iters(runner, self.interval)
        self._featmap_sizes = self._data_samples = None

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        if not self._capture or self._featmap_sizes is None or self._data_samples is None:
            return
        self._capture = False
        with torch.no_grad():
            stats = assignment_stats(self._detector(runner).bbox_head, self._featmap_sizes,
                                     self._data_samples)
        self._featmap_sizes = self._data_samples = None
        self.last_stats = stats
        for level, values in stats.items():
            for key, value in values.items():
                if value is not None:
                    runner.message_hub.update_scalar(f'train/assign/{level}_{key}', value)
        if self.log_text:
            runner.logger.info('assignment per image: ' + ' | '.join(
                f"{level} pos {v['pos']:.1f} ign {v['ignored']:.1f} neg {v['neg']:.0f} iou "
                + ('-' if v['pos_iou'] is None else f"{v['pos_iou']:.3f}")
                for level, v in stats.items()))

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
