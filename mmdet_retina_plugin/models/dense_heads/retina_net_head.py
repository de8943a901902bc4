"""RetinaNet's dense head: the class and box subnets shared across pyramid levels, and the
prior that starts every anchor at a foreground score of ~0.01 (the paper, section 4.1).

The training half (targets and losses for the whole batch at once) is in
:mod:`.retina_head_loss`, the inference half (batched post-processing, one NMS for the batch)
in :mod:`.retina_head_predict`. Losses and detections equal mmdet's ``RetinaHead``.
"""
from __future__ import annotations

import inspect
import math
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from torch import Tensor

from ...utils.compiling import Compiler, check_compile_cfg
from ...utils.fallback import fast_or_plain
from ..task_modules.prior_generators import AnchorCache
from .retina_gt_reporter import GtReporter
from .retina_head_checks import (
    check_head_args,
    check_sampler,
    check_shared_anchors,
    check_sigmoid_loss,
    check_static_num_gts,
)
from .retina_head_loss import RetinaHeadLossMixin
from .retina_head_predict import RetinaHeadPredictMixin
from .retina_level_losses import BATCHED_LOSSES
from .retina_level_packing import (
    PackLevels,
    canvas_forward,
    check_pack_levels,
    packable,
    use_canvas,
)
from .retina_post_settings import PostProcessSettings


@MODELS.register_module()
class RetinaNetHead(RetinaHeadLossMixin, RetinaHeadPredictMixin, BaseDenseHead):
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
        static_num_gts (int, optional): pad every training batch's gts (and ignore regions)
            to this many per image, so that the loss's shapes follow from the image batch's
            alone and a compiled loss (``compile_cfg``) is not recompiled for each gt count;
            padding is never assigned. A batch with an image holding more is padded to its
            count (warned once). None pads to the batch's largest count.
        compile_cfg (dict, optional): ``torch.compile`` keywords (``backend``, ``mode``,
            ``options``, ``dynamic``, ``fullgraph``; defaults ``fullgraph=True``,
            ``dynamic=False``) to compile the head's dense work whole: forward, targets and
            losses in training, forward and candidate selection up to the NMS in inference
            (:mod:`.retina_head_compile`); ``mode='reduce-overhead'`` replays them as CUDA
            graphs. None (default) runs eager. With image sizes fixed
            (``RetinaDataPreprocessor(shape_buckets=...)``) and ``static_num_gts``, each image
            size compiles once.
        pack_levels (bool | str): run the subnets on all levels at once, laid out in one
            canvas (:mod:`.retina_level_packing`): 10 convolutions per batch instead of 50,
            for ~13 % more convolution work; the same maps, to float rounding. ``'auto'``
            (default) packs small CUDA batches (about three 800x1216 images or fewer), where
            kernel launches outweigh the work; True packs everywhere, False never. Heads with
            a norm (e.g. GN) or other than plain 3x3 convs + ReLU always run level by level,
            and a canvas that fails warns once and runs level by level from then on.
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
                 static_num_gts: Optional[int] = None,
                 compile_cfg: OptConfigType = None,
                 pack_levels: PackLevels = 'auto',
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
        check_static_num_gts(static_num_gts)
        self.static_num_gts = static_num_gts
        self._warned_static_gts = False
        compile_cfg = check_compile_cfg(compile_cfg)
        self.dense_compiler = None if compile_cfg is None else Compiler(compile_cfg)
        self.pack_levels = check_pack_levels(pack_levels)
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

    def forward(self, x: Iterable[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """Runs the head on every level: level by level, or on one canvas holding them all
        (``pack_levels``; the same maps).

        Args:
            x: pyramid maps ``(B, in_channels, Hi, Wi)``, finest first.

        Returns:
            ``cls_scores`` ``[(B, A*K, Hi, Wi)]`` and ``bbox_preds`` ``[(B, A*4, Hi, Wi)]``.
        """
        x = tuple(x)  # any iterable of maps, as mmdet's multi_apply takes
        layout = use_canvas(self.pack_levels, x)
        if layout is not None and packable((self.cls_convs, self.reg_convs),
                                           (self.retina_cls, self.retina_reg)):
            return fast_or_plain(
                lambda: canvas_forward((self.cls_convs, self.reg_convs),
                                       (self.retina_cls, self.retina_reg), x, layout),
                lambda: self._levels(x), self._stop_packing,
                "RetinaNetHead: the levels' canvas", 'running level by level')
        return self._levels(x)

    def _stop_packing(self) -> None:
        self.pack_levels = False

    def _levels(self, x: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
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
