"""RetinaNet's dense head with batched training targets and batched post-processing.

mmdet's ``AnchorHead`` builds targets image by image and level by level (one assigner call,
five focal-loss calls and five box-loss calls per batch), and post-processes image by image.
This head flattens the levels once and works on the whole batch: one assignment (through the
assigner's ``assign_batch`` when it has one), one focal-loss call over ``B * sum(Hi*Wi*A)``
anchors with per-level partial sums, one dense box-loss call over all anchors (weight 1 on
positives), without host syncs and with shapes fixed by the batch's shapes and its largest gt
count; a batched top-k / decode / score filter and one class-wise NMS over the whole batch
(:mod:`.retina_post_processing`). Losses and detections equal mmdet's ``RetinaHead``.
"""
from __future__ import annotations

import inspect
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptInstanceList, OptMultiConfig
from mmengine.config import ConfigDict
from torch import Tensor

from ...utils.dist_utils import reduce_mean_avg_factor
from ...utils.errors import RetinaConfigError
from ..task_modules.prior_generators import AnchorCache
from .retina_gt_reporter import GtReporter
from .retina_gts import GtBatch, image_hw, pad_gts
from .retina_head_checks import (
    check_head_args,
    check_levels,
    check_sampler,
    check_shared_anchors,
    check_sigmoid_loss,
)
from .retina_level_losses import (
    BATCHED_LOSSES,
    box_level_losses,
    box_regression_pair,
    cls_level_losses,
    flatten_levels,
)
from .retina_loss_reduction import moving_average
from .retina_post_processing import detections_by_image, level_topk_sizes, select_candidates
from .retina_post_settings import PostProcessSettings
from .retina_targets import BatchTargets, batch_targets


@MODELS.register_module()
class RetinaNetHead(BaseDenseHead):
    """RetinaNet head (`arXiv:1708.02002`): a class subnet and a box subnet over each level.

    Each subnet is ``stacked_convs`` 3x3 convs of ``feat_channels`` + ReLU (+ optional norm),
    then a 3x3 conv to ``K*A`` class logits (sigmoid, ``K = num_classes``) or ``4*A`` box
    deltas; weights are shared across levels but not between the subnets. Parameter names equal
    mmdet's ``RetinaHead`` (``cls_convs.i.conv``, ``reg_convs.i.conv``, ``retina_cls``,
    ``retina_reg``) so its checkpoints load with ``strict=True``.

    Every argument of mmdet's ``RetinaHead`` / ``AnchorHead`` is accepted with mmdet's meaning
    and default, so an mmdet config swaps this head in by its ``type`` alone.

    Args:
        num_classes (int): number of foreground classes ``K`` (>= 1); label ``K`` is background.
        in_channels (int): channels of each input level (>= 1).
        stacked_convs (int): 3x3 convs before each subnet's predictor (>= 0).
        feat_channels (int): channels of those convs (>= 1).
        prior_prob (float): initial foreground probability of every class logit, in (0, 1);
            sets ``retina_cls.bias = -log((1 - prior_prob) / prior_prob)``.
        conv_cfg (dict, optional): conv config of the stacked convs (None: ``nn.Conv2d``).
        norm_cfg (dict, optional): norm config of the stacked convs (None: no norm; e.g.
            ``dict(type='GN', num_groups=32)``).
        anchor_generator (dict): mmdet ``AnchorGenerator`` config; one stride per input level,
            the same number of base anchors on every level.
        bbox_coder (dict): box coder config (``DeltaXYWHBBoxCoder``, means 0, stds 1,
            ``clip_border=True`` by default; ``clip_border`` clips detections to the image and
            measures gt boxes inside it).
        reg_decoded_bbox (bool): apply ``loss_bbox`` to decoded boxes vs gt boxes (IoU-type
            losses) instead of deltas vs encoded targets.
        loss_cls (dict): any sigmoid classification loss with mmdet's ``(pred, labels, weights,
            avg_factor=)`` interface; the built loss's ``use_sigmoid`` must be True (mmdet's
            default: ``CrossEntropyLoss(use_sigmoid=True)``; RetinaNet: ``RetinaFocalLoss`` or
            ``FocalLoss``).
        loss_bbox (dict): any box loss with mmdet's ``(pred, target, weight, avg_factor=)``
            interface (mmdet's default: ``SmoothL1Loss(beta=1/9)``; RetinaNet: ``L1Loss``;
            ``GIoULoss`` with ``reg_decoded_bbox=True``).
        sync_avg_factor (bool): divide the losses by the positive-anchor count averaged over all
            processes (one all-reduce per step) instead of this process's own count, so every
            rank weighs an anchor alike, as one large batch would (no-op in one process).
        avg_factor_momentum (float, optional): None divides the losses by this step's positive
            count (mmdet); a momentum ``m`` in [0, 1) divides them by an exponential moving
            average of it, ``ema = m * ema + (1 - m) * count`` (detectron2's RetinaNet uses
            0.9), so a step with few positives, common with small batches, does not take an
            outsized step. The average is a buffer (``avg_factor_ema``, checkpointed; 0 until
            the first training step, whose count starts it; missing from a checkpoint, e.g. a
            stock ``RetinaHead``'s, it loads as 0) and is updated only in training mode.
        train_cfg (dict, optional): ``assigner`` (any; batched through ``assign_batch`` when it
            has it), ``allowed_border`` (-1: keep anchors crossing the image border),
            ``pos_weight`` (<= 0: 1), ``sampler`` (None or ``PseudoSampler``, any spelling the
            registry resolves), ``debug`` (unused, as in mmdet).
        test_cfg (dict, optional): :class:`~.PostProcessSettings` (``nms``: mmcv's ``nms``
            batched over the images, or any other mmcv ``batched_nms`` config such as
            ``soft_nms`` image by image).
        init_cfg (dict or list[dict], optional): None for RetinaNet's init in
            :meth:`init_weights` (normal std 0.01, bias 0, class bias from ``prior_prob``); any
            other init_cfg is applied on top of it.

    Losses come per level, as mmdet's ``AnchorHead`` returns them, from one call over the batch
    where the loss allows it (:mod:`.retina_level_losses`). With ``RetinaFocalLoss``, a batched
    box loss and ``RetinaIoUAssigner`` (without ``gpu_assign_thr`` or ``perm_repeat_gt_cfg``,
    which move data to the host on purpose) ``loss_by_feat`` issues no host sync.
    """

    def __init__(self,
                 num_classes: int = 80,
                 in_channels: int = 256,
                 stacked_convs: int = 4,
                 feat_channels: int = 256,
                 prior_prob: float = 0.01,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 anchor_generator: ConfigType = dict(
                     type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                     ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                 bbox_coder: ConfigType = dict(
                     type='DeltaXYWHBBoxCoder', clip_border=True,
                     target_means=(0., 0., 0., 0.), target_stds=(1., 1., 1., 1.)),
                 reg_decoded_bbox: bool = False,
                 loss_cls: ConfigType = dict(
                     type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                 loss_bbox: ConfigType = dict(
                     type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0),
                 sync_avg_factor: bool = False,
                 avg_factor_momentum: Optional[float] = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        check_head_args(num_classes, in_channels, feat_channels, stacked_convs, prior_prob,
                        avg_factor_momentum)
        self.num_classes = num_classes
        self.cls_out_channels = num_classes
        self.use_sigmoid_cls = True
        self.in_channels = in_channels
        self.stacked_convs = stacked_convs
        self.feat_channels = feat_channels
        self.prior_prob = prior_prob
        self.reg_decoded_bbox = reg_decoded_bbox
        self.sync_avg_factor = sync_avg_factor
        self.avg_factor_momentum = avg_factor_momentum
        if avg_factor_momentum is not None:
            # a buffer so that resuming continues the average; 0 until the first training step
            # (a real average is >= 1), also when loaded from a checkpoint without it
            self.register_buffer('avg_factor_ema', torch.tensor(0.0))
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        PostProcessSettings.from_cfg(test_cfg)  # checked at build time, read at each predict

        self.prior_generator = TASK_UTILS.build(anchor_generator)
        check_shared_anchors(self.prior_generator.num_base_priors)
        self.num_base_priors = self.prior_generator.num_base_priors[0]
        self.anchor_cache = AnchorCache(self.prior_generator)
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        check_sigmoid_loss(self.loss_cls, loss_cls)
        self._cls_batched = type(self.loss_cls) in BATCHED_LOSSES
        self._cls_segments = 'segments' in inspect.signature(self.loss_cls.forward).parameters
        self._box_batched = type(self.loss_bbox) in BATCHED_LOSSES
        self.gt_reporter = GtReporter()
        if train_cfg:
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])
            check_sampler(train_cfg.get('sampler'))

        def branch() -> nn.ModuleList:
            return nn.ModuleList(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3,
                           padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
                for i in range(stacked_convs))

        self.cls_convs = branch()
        self.reg_convs = branch()
        pred_in = feat_channels if stacked_convs > 0 else in_channels
        self.retina_cls = nn.Conv2d(pred_in, self.num_base_priors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(pred_in, self.num_base_priors * self.bbox_coder.encode_size,
                                    3, padding=1)

    # ------------------------------------------------------------------ init / forward
    def init_weights(self) -> None:
        """RetinaNet init (normal std 0.01 + bias 0 on all convs, prior bias on the class
        predictor), then any user ``init_cfg`` (e.g. ``Pretrained``) on top.

        Done here rather than through the default ``init_cfg`` so that the prior bias does not
        depend on an ``override`` entry that a user config could drop. Draws the same random
        numbers in the same order as mmdet's ``RetinaHead``, so under one seed both start from
        identical weights and swapping the head into a seeded config leaves its start unchanged.
        """
        if not self._is_init:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            # RetinaHead's init_cfg override draws the class predictor a second time.
            nn.init.normal_(self.retina_cls.weight, mean=0.0, std=0.01)
            nn.init.constant_(self.retina_cls.bias,
                              -math.log((1.0 - self.prior_prob) / self.prior_prob))
        super().init_weights()

    def forward_single(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Runs both subnets on one level.

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``cls_score`` ``(B, A*K, H, W)`` logits and ``bbox_pred`` ``(B, A*4, H, W)``
            deltas; channel ``a*K + k`` is class ``k`` of base anchor ``a``.
        """
        cls_feat, reg_feat = x, x
        for cls_conv, reg_conv in zip(self.cls_convs, self.reg_convs):
            cls_feat = cls_conv(cls_feat)
            reg_feat = reg_conv(reg_feat)
        return self.retina_cls(cls_feat), self.retina_reg(reg_feat)

    def forward(self, x: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Runs the head on every level.

        Args:
            x: pyramid maps ``(B, in_channels, Hi, Wi)``, finest first.

        Returns:
            ``cls_scores`` ``[(B, A*K, Hi, Wi)]`` and ``bbox_preds`` ``[(B, A*4, Hi, Wi)]``.
        """
        outs = [self.forward_single(feat) for feat in x]
        return [o[0] for o in outs], [o[1] for o in outs]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Checkpoints of mmdet's RetinaHead (or of this head without the option) have no
        # average: load it as not started, so they load with strict=True; a head without the
        # option has no use for one.
        key = prefix + 'avg_factor_ema'
        if self.avg_factor_momentum is not None:
            if key not in state_dict:
                state_dict[key] = torch.zeros_like(self.avg_factor_ema)
        else:
            state_dict.pop(key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ training
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
            batch_gt_instances, batch_img_metas, batch_gt_instances_ignore, anchors))

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
        device = cls_scores[0].device
        # 1. anchors: float32 like mmdet's get_anchors whatever the score dtype; cached by shape
        anchors, _ = self.anchor_cache.anchors(featmap_sizes, device, torch.float32)
        valid = self.anchor_cache.valid_flags(
            featmap_sizes, [m['pad_shape'] for m in batch_img_metas], device)
        gts = pad_gts(batch_gt_instances, batch_img_metas, batch_gt_instances_ignore, anchors)
        loss_cls, loss_bbox, bad_gts = self.retina_losses(cls_scores, bbox_preds, anchors,
                                                          valid, gts)
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

    # ------------------------------------------------------------------ inference
    def predict_by_feat(self,
                        cls_scores: List[Tensor],
                        bbox_preds: List[Tensor],
                        score_factors: Optional[List[Tensor]] = None,
                        batch_img_metas: Optional[List[dict]] = None,
                        cfg: Optional[ConfigDict] = None,
                        rescale: bool = False,
                        with_nms: bool = True) -> InstanceList:
        """Detections of a batch, equal to mmdet's ``BaseDenseHead.predict_by_feat``: the steps
        of :mod:`.retina_post_processing` for the whole batch, with shapes fixed up to the NMS.
        The host waits for the device twice per batch with mmcv's plain ``nms`` (once without
        NMS; once more with ``nms_pre <= 0``; image by image for other NMS types).

        Args:
            cls_scores (List[Tensor]): ``[(B, A*K, Hi, Wi)]`` logits.
            bbox_preds (List[Tensor]): ``[(B, A*4, Hi, Wi)]`` deltas.
            score_factors (List[Tensor], optional): must be None (no centerness-like factor).
            batch_img_metas (List[dict], optional): per image ``img_shape`` and, with
                ``rescale``, ``scale_factor`` ``(w_scale, h_scale)``.
            cfg (ConfigDict, optional): test config; None -> ``self.test_cfg``.
            rescale (bool): map boxes back to the original image size.
            with_nms (bool): False skips NMS and ``max_per_img`` (test-time augmentation).

        Returns:
            InstanceList: per image ``bboxes`` ``(N, 4)`` (x1, y1, x2, y2), ``scores`` ``(N,)``
            sorted descending when NMS ran, ``labels`` ``(N,)`` in ``[0, K)``.
        """
        if score_factors is not None:
            raise RetinaConfigError('score_factors must be None for RetinaNetHead')
        featmap_sizes = check_levels(cls_scores, bbox_preds, self.prior_generator.num_levels)
        settings = PostProcessSettings.from_cfg(self.test_cfg if cfg is None else cfg)
        nms_cfg = settings.nms_cfg() if with_nms else None
        _, level_anchors = self.anchor_cache.anchors(featmap_sizes, cls_scores[0].device,
                                                     cls_scores[0].dtype)
        candidates = select_candidates(
            cls_scores, bbox_preds, level_anchors, self.cls_out_channels, self.bbox_coder,
            settings, level_topk_sizes(cls_scores, settings),
            image_hw(batch_img_metas, bbox_preds[0]),
            [m['scale_factor'] for m in batch_img_metas] if rescale else None)
        return detections_by_image(*candidates, nms_cfg, settings.max_per_img)
