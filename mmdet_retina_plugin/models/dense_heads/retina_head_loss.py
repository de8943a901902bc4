"""RetinaNetHead's training half: anchors -> targets -> normaliser -> classification loss ->
box loss, for the whole batch at once.

mmdet's ``AnchorHead`` builds targets image by image and level by level (one assigner call,
five focal-loss calls and five box-loss calls per batch). Here the levels are flattened once:
one assignment (through the assigner's ``assign_batch`` when it has one), one focal-loss call
over ``B * sum(Hi*Wi*A)`` anchors with per-level partial sums, one dense box-loss call over all
anchors (weight 1 on positives), without host syncs and with shapes fixed by the batch's shapes
and its largest gt count. Losses equal mmdet's ``RetinaHead``'s, level by level.
"""
from __future__ import annotations

import warnings
from typing import List, Sequence, Tuple

import torch
from mmdet.models.utils import unpack_gt_instances
from mmdet.structures import SampleList
from mmdet.utils import InstanceList, OptInstanceList
from torch import Tensor

from ...utils.dist_utils import reduce_mean_avg_factor
from .retina_gts import GtBatch, pad_gts
from .retina_head_checks import check_feature_levels, check_levels
from .retina_head_compile import dense_losses
from .retina_level_losses import (
    box_level_losses,
    box_regression_pair,
    cls_level_losses,
    flatten_levels,
)
from .retina_loss_reduction import moving_average
from .retina_targets import BatchTargets, batch_targets


class RetinaHeadLossMixin:
    """``loss_by_feat`` of :class:`~.retina_net_head.RetinaNetHead`, which sets the attributes
    read here (``assigner``, ``train_cfg``, ``bbox_coder``, ``loss_cls``, ``loss_bbox``,
    ``anchor_cache``, ``gt_reporter``, the normaliser options, ``static_num_gts``,
    ``dense_compiler``)."""

    def training_anchors(self, featmap_sizes: Sequence[Tuple[int, int]],
                         batch_img_metas: List[dict], device: torch.device
                         ) -> Tuple[Tensor, List[Tensor], Tensor]:
        """The anchors the loss assigns: float32 like mmdet's ``get_anchors`` whatever the
        score dtype, cached by shape, with each image's valid flags.

        Args:
            featmap_sizes (Sequence[Tuple[int, int]]): ``(Hi, Wi)`` of each level.
            batch_img_metas (List[dict]): per image meta with ``pad_shape``.
            device (torch.device): where the anchors go.

        Returns:
            Tuple[Tensor, List[Tensor], Tensor]: ``(A, 4)`` anchors of all levels, the
            ``[(Hi*Wi*Ab, 4)]`` views of each level, and ``(B, A)`` bool, False on each
            image's padding.
        """
        anchors, level_anchors = self.anchor_cache.anchors(featmap_sizes, device, torch.float32)
        valid = self.anchor_cache.valid_flags(
            featmap_sizes, [m['pad_shape'] for m in batch_img_metas], device)
        return anchors, level_anchors, valid

    def get_batch_targets(self, anchors: Tensor, valid: Tensor,
                          batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                          batch_gt_instances_ignore: OptInstanceList = None) -> BatchTargets:
        """Classification targets of a whole batch with this head's ``train_cfg`` and box
        coder (see :func:`~.retina_targets.batch_targets`).

        Args:
            anchors (Tensor): ``(A, 4)`` anchors of all levels (shared by the batch).
            valid (Tensor): ``(B, A)`` bool, False on each image's padding.
            batch_gt_instances (InstanceList): per image ``bboxes`` (Gi, 4), ``labels`` (Gi,).
            batch_img_metas (List[dict]): per image meta with ``img_shape``.
            batch_gt_instances_ignore (OptInstanceList): per image ignored ``bboxes`` or None.

        Returns:
            BatchTargets: labels, weights, assignment and normaliser of the batch.
        """
        return self._targets(anchors, valid, pad_gts(
            batch_gt_instances, batch_img_metas, batch_gt_instances_ignore, anchors,
            self.static_num_gts or 0))

    def _targets(self, anchors: Tensor, valid: Tensor, gts: GtBatch) -> BatchTargets:
        """:meth:`get_batch_targets` of padded gts."""
        return batch_targets(self.assigner, anchors, valid, gts, self.num_classes,
                             allowed_border=self.train_cfg.get('allowed_border', -1),
                             pos_weight=self.train_cfg.get('pos_weight', -1),
                             clip_border=getattr(self.bbox_coder, 'clip_border', True))

    def loss_by_feat(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """Per-level focal loss over all anchors and box loss over positives, divided by
        ``avg_factor`` (sum over images of ``max(num_pos_i, 1)``, as mmdet; with
        ``sync_avg_factor``, its mean over all processes; with ``avg_factor_momentum``, its
        moving average). The tensor work is :meth:`retina_losses`.

        Gt boxes of width or height <= 0 (inside the image, when the box coder clips) are
        ignored with a warning naming the image; non-finite gt boxes raise. Both are reported
        through :attr:`gt_reporter` without waiting for the device: at once for CPU tensors,
        otherwise as soon as the device has passed the check, at the latest at the next call.

        Args:
            cls_scores (List[Tensor]): ``[(B, A*K, Hi, Wi)]`` logits.
            bbox_preds (List[Tensor]): ``[(B, A*4, Hi, Wi)]`` deltas.
            batch_gt_instances (InstanceList): per image ``bboxes`` ``(Gi, 4)`` (x1, y1, x2, y2,
                input-image pixels) and ``labels`` ``(Gi,)`` in ``[0, K)``.
            batch_img_metas (List[dict]): per image meta with ``pad_shape`` and ``img_shape``
                (``img_id`` / ``img_path`` name the image in warnings and errors).
            batch_gt_instances_ignore (OptInstanceList): per image ignored ``bboxes`` or None.

        Returns:
            dict: ``loss_cls`` and ``loss_bbox``, each a list of 0-d tensors, one per level,
            equal to mmdet's ``RetinaHead``'s.

        Raises:
            ValueError: a gt box has a NaN or infinite coordinate.
        """
        featmap_sizes = check_levels(cls_scores, bbox_preds, self.prior_generator.num_levels)
        # 1. anchors
        anchors, valid, gts = self._anchors_and_gts(
            featmap_sizes, cls_scores[0].device, batch_gt_instances, batch_img_metas,
            batch_gt_instances_ignore)
        return self._loss_dict(*self.retina_losses(cls_scores, bbox_preds, anchors, valid, gts),
                               batch_img_metas)

    def loss(self, x: Tuple[Tensor, ...], batch_data_samples: SampleList) -> dict:
        """mmdet's ``BaseDenseHead.loss`` (forward, then :meth:`loss_by_feat`); with
        ``compile_cfg``, the forward and the tensor work of the loss run as one compiled region
        (:mod:`.retina_head_compile`).

        Args:
            x (Tuple[Tensor, ...]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
            batch_data_samples (SampleList): per image ``gt_instances``, ``metainfo`` and
                optionally ``ignored_instances``.

        Returns:
            dict: as :meth:`loss_by_feat`.
        """
        if self.dense_compiler is None:
            return super().loss(x, batch_data_samples)
        gt_instances, gts_ignore, metas = unpack_gt_instances(batch_data_samples)
        featmap_sizes = check_feature_levels(x, self.prior_generator.num_levels)
        anchors, valid, gts = self._anchors_and_gts(featmap_sizes, x[0].device, gt_instances,
                                                    metas, gts_ignore)
        loss_cls, loss_bbox, bad_gts = self.dense_compiler(dense_losses, self, tuple(x),
                                                           anchors, valid, gts)
        # a CUDA graph's outputs are overwritten by its next replay; the reporter reads later
        return self._loss_dict(loss_cls, loss_bbox, bad_gts.clone(), metas)

    def _anchors_and_gts(self, featmap_sizes: Sequence[Tuple[int, int]], device: torch.device,
                         batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                         batch_gt_instances_ignore: OptInstanceList
                         ) -> Tuple[Tensor, Tensor, GtBatch]:
        """The ``(S, 4)`` anchors, their ``(B, S)`` valid flags and the padded gts (to
        ``static_num_gts`` at least) of a batch."""
        anchors, _, valid = self.training_anchors(featmap_sizes, batch_img_metas, device)
        min_count = self.static_num_gts or 0
        most = max((len(g) for g in batch_gt_instances), default=0) if min_count else 0
        if most > min_count and not self._warned_static_gts:
            self._warned_static_gts = True
            warnings.warn(f'RetinaNetHead: an image has {most} gts, more than static_num_gts='
                          f'{min_count}; its batch is padded to {most} (a new loss shape; '
                          'warned once)')
        gts = pad_gts(batch_gt_instances, batch_img_metas, batch_gt_instances_ignore, anchors,
                      min_count)
        return anchors, valid, gts

    def _loss_dict(self, loss_cls: Tensor, loss_bbox: Tensor, bad_gts: Tensor,
                   batch_img_metas: List[dict]) -> dict:
        """mmdet's per-level loss lists from the ``(L,)`` losses; bad gts go to the reporter."""
        self.gt_reporter.submit(bad_gts, batch_img_metas)
        return dict(loss_cls=list(loss_cls.unbind(0)), loss_bbox=list(loss_bbox.unbind(0)))

    def retina_losses(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      anchors: Tensor, valid: Tensor, gts: GtBatch
                      ) -> Tuple[Tensor, Tensor, Tensor]:
        """The tensor core of :meth:`loss_by_feat`: targets, losses and normaliser from
        tensors only, with shapes fixed by theirs (it compiles whole with ``torch.compile``).

        Args:
            cls_scores (Sequence[Tensor]): ``[(B, A*K, Hi, Wi)]`` logits.
            bbox_preds (Sequence[Tensor]): ``[(B, A*4, Hi, Wi)]`` deltas.
            anchors (Tensor): ``(S, 4)`` anchors of all levels, ``S = sum(Hi*Wi*A)``.
            valid (Tensor): ``(B, S)`` bool, False on each image's padding.
            gts (GtBatch): the padded gts (:func:`~.retina_gts.pad_gts`).

        Returns:
            Tuple[Tensor, Tensor, Tensor]: ``loss_cls`` and ``loss_bbox`` ``(L,)`` per level,
            and the ``(2, B)`` counts of non-finite and degenerate gts left out.
        """
        level_sizes = [s.size(-2) * s.size(-1) * self.num_base_priors for s in cls_scores]
        # 2. targets: assignment, labels, weights and the positive count
        targets = self._targets(anchors, valid, gts)
        # 3. normaliser of both losses: positives per image (>= 1), summed
        avg_factor = targets.avg_factor
        if self.sync_avg_factor:
            avg_factor = reduce_mean_avg_factor(avg_factor)
        if self.avg_factor_momentum is not None:
            avg_factor = moving_average(self.avg_factor_ema, avg_factor,
                                        self.avg_factor_momentum, update=self.training)
        # 4. classification loss over all anchors
        loss_cls = cls_level_losses(
            self.loss_cls, flatten_levels(cls_scores, self.cls_out_channels), targets,
            level_sizes, avg_factor, segments=self._cls_segments, batched=self._cls_batched)
        # 5. box loss over positives
        pred, target = box_regression_pair(
            self.bbox_coder, flatten_levels(bbox_preds, self.bbox_coder.encode_size), anchors,
            targets, self.reg_decoded_bbox)
        loss_bbox = box_level_losses(self.loss_bbox, pred, target, targets.gt_inds > 0,
                                     level_sizes, avg_factor, batched=self._box_batched)
        return loss_cls, loss_bbox, targets.bad_gts
