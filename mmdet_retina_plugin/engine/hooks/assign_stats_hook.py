"""Per-level anchor assignment statistics during training (positives / ignored / negatives)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import HOOKS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from ...models.dense_heads.retina_targets import anchor_targets, positive_pairs

STAT_KEYS = ('pos', 'ignored', 'neg', 'pos_iou')


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


def assignment_stats(head: nn.Module, featmap_sizes: Sequence[Tuple[int, int]],
                     batch_data_samples: Sequence[Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Assigns the batch's gts to the head's anchors as training does, and counts per level.

    Works with any anchor head exposing ``prior_generator``, ``assigner``, ``bbox_coder`` and
    ``train_cfg`` (our ``RetinaNetHead``, mmdet's ``RetinaHead``): the targets come from
    :func:`~mmdet_retina_plugin.models.dense_heads.retina_targets.anchor_targets`, the code our
    head trains with (anchors inside each image's ``pad_shape`` and, with
    ``train_cfg.allowed_border >= 0``, its border; batched through the assigner's
    ``assign_batch`` when it has one, mmdet's ``assign`` image by image otherwise).

    Args:
        head (nn.Module): the detector's ``bbox_head`` (built with a ``train_cfg``).
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
    generator = head.prior_generator
    device = next(head.parameters()).device
    per_level = generator.grid_priors(featmap_sizes, device=device)
    anchors = torch.cat(per_level)
    level = torch.cat([torch.full((len(a),), i, device=device) for i, a in enumerate(per_level)])
    num_levels = len(per_level)
    valid = torch.stack([torch.cat(generator.valid_flags(featmap_sizes, m['pad_shape'], device))
                         for m in metas])
    train_cfg = head.train_cfg or {}
    targets = anchor_targets(
        head.assigner, anchors, valid, gts, metas, head.num_classes, ignores,
        allowed_border=train_cfg.get('allowed_border', -1),
        pos_weight=train_cfg.get('pos_weight', -1),
        clip_border=getattr(head.bbox_coder, 'clip_border', True))
    gt_inds, taking_part = targets.gt_inds, targets.anchor_valid
    counts = torch.stack([
        torch.bincount(level.expand_as(gt_inds)[mask], minlength=num_levels)
        for mask in (gt_inds > 0, taking_part & (gt_inds < 0), gt_inds == 0)]).double()
    img_idx, anchor_idx, pos_gt = positive_pairs(targets)
    iou = bbox_overlaps(anchors[anchor_idx], pos_gt, is_aligned=True)
    iou_sum = torch.bincount(level[anchor_idx], weights=iou.double(), minlength=num_levels)
    num_images = max(len(gts), 1)
    names = level_names(generator.strides)
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
    ``bbox_head``). After the iteration it re-runs the head's assigner on them (see
    :func:`assignment_stats`), so it needs no API from the head beyond mmdet's anchor-head
    attributes. Scalars go to the MessageHub as ``train/assign/<level>_<stat>``; the
    ``LoggerHook`` then writes them to the log and to the visualizer backends (TensorBoard when
    configured). A one-line summary also goes to the logger.

    Args:
        interval: iterations between two measurements (>= 1).
        log_text: also print the per-level summary through ``runner.logger``.
    """

    priority = 'NORMAL'  # before the LoggerHook (BELOW_NORMAL) of the same iteration

    def __init__(self, interval: int = 50, log_text: bool = True) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f'interval must be an int >= 1, got {interval!r}')
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
        missing = [a for a in ('prior_generator', 'assigner') if not hasattr(head, a)]
        if head is None or missing:
            raise ValueError(f'RetinaAssignStatsHook needs model.bbox_head with prior_generator '
                             f'and assigner (an anchor head built with train_cfg); missing '
                             f'{missing}')
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
