"""RetinaNet's dense head with batched training targets and batched post-processing.

mmdet's ``AnchorHead`` builds targets image by image and level by level (one assigner call,
five focal-loss calls and five box-loss calls per batch), and post-processes image by image.
This head flattens the levels once and works on the whole batch: one assignment (through the
assigner's ``assign_batch`` when it has one), one focal-loss call over ``B * sum(Hi*Wi*A)``
anchors, one box-loss call over the positives only, a batched score filter / top-k / decode,
and one class-wise NMS over the whole batch (``models/layers/batched_nms.py``). Losses and
detections equal mmdet's ``RetinaHead`` (see ``tests/models/test_parity_retinanet.py``).
"""
from __future__ import annotations

import copy
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmcv.ops import batched_nms
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.models.task_modules.samplers import PseudoSampler
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptInstanceList, OptMultiConfig
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ...utils.dist_utils import reduce_mean_avg_factor
from ..layers.batched_nms import batched_nms_batch
from ..layers.batched_nms import supports as batched_nms_supports
from ..task_modules.prior_generators import AnchorCache


class BatchTargets(NamedTuple):
    """Training targets of a batch (``A = sum(Hi*Wi*num_base_priors)`` anchors per image).

    Attributes:
        labels: ``(B, A)`` long: class in ``[0, K)`` for positives, ``K`` (background) else.
        label_weights: ``(B, A)`` float: 0 for ignored / invalid anchors, ``pos_weight`` (1 by
            default) for positives, 1 for negatives.
        gt_inds: ``(B, A)`` long: 0 negative, -1 ignored or invalid, ``k > 0`` -> gt ``k-1``.
        gt_bboxes: ``(B, G, 4)`` gt boxes padded to the largest gt count ``G``.
        avg_factor: scalar float tensor, sum over images of ``max(num_pos_i, 1)`` (mmdet's
            ``PseudoSampler`` normaliser).
    """
    labels: Tensor
    label_weights: Tensor
    gt_inds: Tensor
    gt_bboxes: Tensor
    avg_factor: Tensor


def _flatten_levels(maps: Sequence[Tensor], channels: int) -> Tensor:
    """``[(B, A*C, Hi, Wi)]`` -> ``(B, sum(Hi*Wi*A), C)``, in the anchors' order."""
    batch = maps[0].size(0)
    return torch.cat([m.permute(0, 2, 3, 1).reshape(batch, -1, channels) for m in maps], 1)


def _pad_images(items: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Pads per-image ``[(Gi, ...)]`` with zeros to ``(B, G, ...)`` plus a ``(B, G)`` mask."""
    device = items[0].device
    counts = torch.tensor([t.size(0) for t in items], device=device)
    padded = pad_sequence(list(items), batch_first=True)
    valid = torch.arange(padded.size(1), device=device) < counts[:, None]
    return padded, valid


def _topk_above(logits: Tensor, floor: float, k: int) -> Tuple[Tensor, Tensor]:
    """Per row, the ``k`` largest entries above ``floor`` (all of them if ``k <= 0``).

    Selecting candidates first keeps ``topk`` off the millions of background entries.

    Args:
        logits: ``(B, N)``.

    Returns:
        ``values`` ``(B, k')`` sorted descending and their column indexes ``(B, k')``; rows with
        fewer than ``k'`` candidates are padded with ``-inf`` values (index 0).
    """
    num_rows, num_cols = logits.shape
    flat = (logits > floor).view(-1).nonzero().squeeze(1)  # ascending: grouped by row
    row, col = flat // num_cols, flat % num_cols
    counts = torch.bincount(row, minlength=num_rows)
    slot = torch.arange(flat.numel(), device=flat.device) - (counts.cumsum(0) - counts)[row]
    width = int(counts.max()) if flat.numel() else 0
    values = logits.new_full((num_rows, width), -math.inf)
    values[row, slot] = logits.reshape(-1)[flat]
    cols = col.new_zeros((num_rows, width))
    cols[row, slot] = col
    values, sel = values.topk(width if k <= 0 else min(k, width), dim=1)
    return values, cols.gather(1, sel)


@MODELS.register_module()
class RetinaNetHead(BaseDenseHead):
    """RetinaNet head (`arXiv:1708.02002`): a class subnet and a box subnet over each level.

    Each subnet is ``stacked_convs`` 3x3 convs of ``feat_channels`` + ReLU (+ optional norm),
    then a 3x3 conv to ``K*A`` class logits (sigmoid, ``K = num_classes``) or ``4*A`` box
    deltas; weights are shared across levels but not between the subnets. Parameter names equal
    mmdet's ``RetinaHead`` (``cls_convs.i.conv``, ``reg_convs.i.conv``, ``retina_cls``,
    ``retina_reg``) so its checkpoints load with ``strict=True``.

    Args:
        num_classes: number of foreground classes ``K``; label ``K`` is background.
        in_channels: channels of each input level.
        stacked_convs: 3x3 convs before each subnet's predictor (>= 0).
        feat_channels: channels of those convs.
        prior_prob: initial foreground probability of every class logit, in (0, 1); sets
            ``retina_cls.bias = -log((1 - prior_prob) / prior_prob)``.
        conv_cfg: conv config of the stacked convs (None: ``nn.Conv2d``).
        norm_cfg: norm config of the stacked convs (None: no norm; e.g. ``dict(type='GN',
            num_groups=32)``).
        anchor_generator: mmdet ``AnchorGenerator`` config; one stride per input level.
        bbox_coder: box coder config (``DeltaXYWHBBoxCoder``, means 0, stds 1 by default).
        reg_decoded_bbox: apply ``loss_bbox`` to decoded boxes vs gt boxes (IoU-type losses)
            instead of deltas vs encoded targets.
        loss_cls: sigmoid classification loss config with mmdet ``FocalLoss``'s interface.
        loss_bbox: box loss config (L1 for mmdet parity, SmoothL1 beta=0.11 as in the paper,
            GIoU with ``reg_decoded_bbox=True``).
        sync_avg_factor: divide the losses by the positive-anchor count averaged over all
            processes (one all-reduce per step) instead of this process's own count, so every
            rank weighs an anchor alike, as one large batch would (no-op in one process).
        avg_factor_momentum: None divides the losses by this step's positive count (mmdet);
            a momentum ``m`` in [0, 1) divides them by an exponential moving average of it,
            ``ema = m * ema + (1 - m) * count`` (detectron2's RetinaNet uses 0.9), so a
            step with few positives, common with small batches, does not take an outsized
            step. The average is a buffer (``avg_factor_ema``, checkpointed; it starts from the
            first training step's count) and is updated only in training mode.
        train_cfg: ``assigner`` (any; batched through ``assign_batch`` when it has it),
            ``allowed_border`` (-1: keep anchors crossing the image border), ``pos_weight``
            (<= 0: 1), optional ``sampler`` (must be ``PseudoSampler``).
        test_cfg: ``nms_pre``, ``score_thr``, ``min_bbox_size``, ``nms``, ``max_per_img``.
        init_cfg: None for RetinaNet's init in :meth:`init_weights` (normal std 0.01, bias 0,
            class bias from ``prior_prob``); any other init_cfg is applied on top of it.
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
                     type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                     target_stds=[1., 1., 1., 1.]),
                 reg_decoded_bbox: bool = False,
                 loss_cls: ConfigType = dict(
                     type='RetinaFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                     loss_weight=1.0),
                 loss_bbox: ConfigType = dict(type='L1Loss', loss_weight=1.0),
                 sync_avg_factor: bool = False,
                 avg_factor_momentum: Optional[float] = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        if in_channels < 1 or feat_channels < 1:
            raise ValueError(f'in_channels and feat_channels must be >= 1, got '
                             f'{in_channels} and {feat_channels}')
        if stacked_convs < 0:
            raise ValueError(f'stacked_convs must be >= 0, got {stacked_convs}')
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f'prior_prob must be in (0, 1), got {prior_prob}')
        if avg_factor_momentum is not None and not 0.0 <= avg_factor_momentum < 1.0:
            raise ValueError(f'avg_factor_momentum must be None or in [0, 1), got '
                             f'{avg_factor_momentum}')
        if not loss_cls.get('use_sigmoid', False):
            raise ValueError('loss_cls.use_sigmoid must be True: RetinaNet scores each class '
                             'with a sigmoid (no background logit)')
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
            # NaN until the first training step; a buffer so that resuming continues the average
            self.register_buffer('avg_factor_ema', torch.tensor(float('nan')))
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg

        self.prior_generator = TASK_UTILS.build(anchor_generator)
        if len(set(self.prior_generator.num_base_priors)) != 1:
            raise ValueError('anchor_generator must give every level the same number of base '
                             f'anchors (shared convs), got {self.prior_generator.num_base_priors}')
        self.num_base_priors = self.prior_generator.num_base_priors[0]
        self.anchor_cache = AnchorCache(self.prior_generator)
        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        if train_cfg:
            self.assigner = TASK_UTILS.build(train_cfg['assigner'])
            sampler = train_cfg.get('sampler')
            if sampler is not None and sampler.get('type') not in ('PseudoSampler',
                                                                   PseudoSampler):
                raise ValueError(f'train_cfg.sampler must be PseudoSampler (focal loss uses '
                                 f'every anchor), got {sampler.get("type")}')

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

    # ------------------------------------------------------------------ training
    def _check_levels(self, cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor]
                      ) -> List[Tuple[int, int]]:
        if len(cls_scores) != self.prior_generator.num_levels or \
                len(bbox_preds) != len(cls_scores):
            raise ValueError(f'got {len(cls_scores)} cls / {len(bbox_preds)} box levels but '
                             f'anchor_generator.strides has {self.prior_generator.num_levels}')
        return [tuple(s.shape[-2:]) for s in cls_scores]

    def _assign(self, anchors: Tensor, valid: Tensor, batch_gt_instances: InstanceList,
                batch_gt_instances_ignore: OptInstanceList, gt_bboxes: Tensor,
                gt_valid: Tensor) -> Tuple[Tensor, Tensor]:
        """Assigns every anchor of every image.

        Args:
            anchors: ``(A, 4)``.
            valid: ``(B, A)`` bool, anchors taking part in the assignment.
            gt_bboxes, gt_valid: ``(B, G, 4)`` padded gt boxes and their ``(B, G)`` mask.

        Returns:
            ``gt_inds`` ``(B, A)`` (0 negative, -1 ignored or invalid, ``k > 0`` -> gt ``k-1``)
            and ``labels`` ``(B, A)`` (class of the assigned gt, -1 where not positive).
        """
        ignores = batch_gt_instances_ignore or [None] * len(batch_gt_instances)
        if hasattr(self.assigner, 'assign_batch'):
            gt_labels, _ = _pad_images([g.labels.to(anchors.device) for g in batch_gt_instances])
            ignore_bboxes = ignore_valid = None
            if any(ig is not None for ig in ignores):
                ignore_bboxes, ignore_valid = _pad_images(
                    [get_box_tensor(ig.bboxes).to(anchors) if ig is not None
                     else anchors.new_zeros(0, 4) for ig in ignores])
            res = self.assigner.assign_batch(anchors, gt_bboxes, gt_labels, gt_valid, valid,
                                             ignore_bboxes, ignore_valid)
            return res.gt_inds, res.labels
        # per-image fallback for assigners without a batched path (e.g. MaxIoUAssigner):
        # assign the valid anchors only, like mmdet, then scatter back to all anchors
        gt_inds = valid.new_full(valid.shape, -1, dtype=torch.long)
        labels = valid.new_full(valid.shape, -1, dtype=torch.long)
        for i, (gt, ignore) in enumerate(zip(batch_gt_instances, ignores)):
            res = self.assigner.assign(InstanceData(priors=anchors[valid[i]]), gt, ignore)
            gt_inds[i, valid[i]] = res.gt_inds
            labels[i, valid[i]] = res.labels
        return gt_inds, labels

    def get_batch_targets(self, anchors: Tensor, valid: Tensor,
                          batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                          batch_gt_instances_ignore: OptInstanceList = None) -> BatchTargets:
        """Classification targets of a whole batch (mmdet ``AnchorHead.get_targets``
        semantics with ``PseudoSampler``).

        Args:
            anchors: ``(A, 4)`` anchors of all levels (shared by the batch).
            valid: ``(B, A)`` bool, False on each image's padding.
            batch_gt_instances: per image ``bboxes`` ``(Gi, 4)`` and ``labels`` ``(Gi,)``.
            batch_img_metas: per image meta with ``img_shape`` (for ``allowed_border``).
            batch_gt_instances_ignore: per image ignored ``bboxes`` ``(Gi', 4)`` or None.
        """
        allowed_border = self.train_cfg.get('allowed_border', -1)
        if allowed_border >= 0:
            img_hw = anchors.new_tensor([m['img_shape'][:2] for m in batch_img_metas])
            valid = valid & (anchors[None, :, :2] >= -allowed_border).all(-1) \
                & (anchors[None, :, 2] < img_hw[:, 1:2] + allowed_border) \
                & (anchors[None, :, 3] < img_hw[:, 0:1] + allowed_border)
        gt_bboxes, gt_valid = _pad_images(
            [get_box_tensor(g.bboxes).to(anchors) for g in batch_gt_instances])
        gt_inds, assigned = self._assign(anchors, valid, batch_gt_instances,
                                         batch_gt_instances_ignore, gt_bboxes, gt_valid)
        pos = valid & (gt_inds > 0)
        labels = torch.where(pos, assigned, self.num_classes)
        label_weights = (valid & (gt_inds >= 0)).to(anchors.dtype)
        pos_weight = self.train_cfg.get('pos_weight', -1)
        if pos_weight > 0:
            label_weights = torch.where(pos, label_weights.new_tensor(pos_weight),
                                        label_weights)
        avg_factor = pos.sum(1).clamp(min=1).sum().to(anchors.dtype)
        return BatchTargets(labels, label_weights, torch.where(valid, gt_inds, -1), gt_bboxes,
                            avg_factor)

    def loss_by_feat(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                     batch_gt_instances: InstanceList, batch_img_metas: List[dict],
                     batch_gt_instances_ignore: OptInstanceList = None) -> dict:
        """Focal loss over all anchors and box loss over positives, both divided by
        ``avg_factor`` (sum over images of ``max(num_pos_i, 1)``, as mmdet; with
        ``sync_avg_factor``, its mean over all processes).

        Args:
            cls_scores: ``[(B, A*K, Hi, Wi)]`` logits.
            bbox_preds: ``[(B, A*4, Hi, Wi)]`` deltas.
            batch_gt_instances: per image ``bboxes`` ``(Gi, 4)`` (x1, y1, x2, y2, input-image
                pixels) and ``labels`` ``(Gi,)`` in ``[0, K)``.
            batch_img_metas: per image meta with ``pad_shape`` and ``img_shape``.
            batch_gt_instances_ignore: per image ignored ``bboxes`` or None.

        Returns:
            ``dict(loss_cls=scalar, loss_bbox=scalar)``; their sums over levels equal mmdet's
            per-level lists.
        """
        featmap_sizes = self._check_levels(cls_scores, bbox_preds)
        device = cls_scores[0].device
        # float32 anchors like mmdet's get_anchors, whatever the score dtype
        anchors, _ = self.anchor_cache.anchors(featmap_sizes, device, torch.float32)
        valid = self.anchor_cache.valid_flags(
            featmap_sizes, [m['pad_shape'] for m in batch_img_metas], device)
        targets = self.get_batch_targets(anchors, valid, batch_gt_instances, batch_img_metas,
                                         batch_gt_instances_ignore)

        avg_factor = targets.avg_factor
        if self.sync_avg_factor:
            avg_factor = reduce_mean_avg_factor(avg_factor)
        if self.avg_factor_momentum is not None:
            avg_factor = self._smoothed_avg_factor(avg_factor)

        flat_cls = _flatten_levels(cls_scores, self.cls_out_channels)
        loss_cls = self.loss_cls(flat_cls.reshape(-1, self.cls_out_channels),
                                 targets.labels.reshape(-1), targets.label_weights.reshape(-1),
                                 avg_factor=avg_factor)

        img_idx, anchor_idx = (targets.gt_inds > 0).nonzero(as_tuple=True)
        pos_anchors = anchors[anchor_idx]
        pos_gt = targets.gt_bboxes[img_idx, targets.gt_inds[img_idx, anchor_idx] - 1]
        pos_pred = _flatten_levels(bbox_preds, self.bbox_coder.encode_size)[img_idx, anchor_idx]
        if self.reg_decoded_bbox:
            pos_pred = get_box_tensor(self.bbox_coder.decode(pos_anchors, pos_pred))
            pos_target = pos_gt
        else:
            pos_target = self.bbox_coder.encode(pos_anchors, pos_gt)
        loss_bbox = self.loss_bbox(pos_pred, pos_target, avg_factor=avg_factor)
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox)

    def _smoothed_avg_factor(self, avg_factor: Tensor) -> Tensor:
        """The moving average of the positive count after this step (see
        ``avg_factor_momentum``); updated in place, without a host sync, in training mode."""
        ema = self.avg_factor_ema
        count = avg_factor.detach().to(ema.dtype)
        new = torch.where(ema.isnan(), count,
                          self.avg_factor_momentum * ema + (1 - self.avg_factor_momentum) * count)
        if self.training:
            ema.copy_(new)
        return new

    # ------------------------------------------------------------------ inference
    def predict_by_feat(self,
                        cls_scores: List[Tensor],
                        bbox_preds: List[Tensor],
                        score_factors: Optional[List[Tensor]] = None,
                        batch_img_metas: Optional[List[dict]] = None,
                        cfg: Optional[ConfigDict] = None,
                        rescale: bool = False,
                        with_nms: bool = True) -> InstanceList:
        """Detections of a batch, equal to mmdet's ``BaseDenseHead.predict_by_feat``.

        Per level, for the whole batch: the ``nms_pre`` best (anchor, class) pairs with a
        sigmoid score above ``score_thr``; then decode, clip to each ``img_shape``, optional rescale to the original
        image, ``min_bbox_size`` filter, class-wise NMS and ``max_per_img``.

        Args:
            cls_scores: ``[(B, A*K, Hi, Wi)]`` logits.
            bbox_preds: ``[(B, A*4, Hi, Wi)]`` deltas.
            score_factors: must be None (RetinaNet has no centerness-like factor).
            batch_img_metas: per image ``img_shape`` and, with ``rescale``, ``scale_factor``
                ``(w_scale, h_scale)``.
            cfg: test config; None -> ``self.test_cfg``.
            rescale: map boxes back to the original image size.
            with_nms: False skips NMS and ``max_per_img`` (e.g. for test-time augmentation).

        Returns:
            Per image ``InstanceData`` with ``bboxes`` ``(N, 4)`` (x1, y1, x2, y2), ``scores``
            ``(N,)`` sorted descending when NMS ran, ``labels`` ``(N,)`` in ``[0, K)``.
        """
        if score_factors is not None:
            raise ValueError('score_factors must be None for RetinaNetHead')
        featmap_sizes = self._check_levels(cls_scores, bbox_preds)
        cfg = copy.deepcopy(self.test_cfg if cfg is None else cfg)
        nms_pre = cfg.get('nms_pre', -1)
        score_thr = cfg.get('score_thr', 0)
        num_classes, dim = self.cls_out_channels, self.bbox_coder.encode_size
        _, level_anchors = self.anchor_cache.anchors(featmap_sizes, cls_scores[0].device,
                                                     cls_scores[0].dtype)
        # sigmoid is monotonic: pre-select on logits (no sigmoid over all B*A*K pairs) with a
        # margin, then apply mmdet's exact `sigmoid > score_thr` test on the survivors
        if score_thr <= 0:
            logit_floor = -math.inf
        elif score_thr >= 1:
            logit_floor = math.inf
        else:
            logit_floor = math.log(score_thr / (1 - score_thr)) - 1e-3
        all_scores, all_labels, all_deltas, all_anchors = [], [], [], []
        for cls_score, bbox_pred, anchors in zip(cls_scores, bbox_preds, level_anchors):
            batch, _, height, width = cls_score.shape
            # native (B, A*K, H, W) layout: no permute copy; flat = (a*K + k) * H*W + pixel
            top_logits, flat = _topk_above(cls_score.detach().reshape(batch, -1), logit_floor,
                                           nms_pre)
            channel, pixel = flat // (height * width), flat % (height * width)
            base = channel // num_classes
            deltas = bbox_pred.detach().reshape(batch, self.num_base_priors, dim, -1)
            batch_idx = torch.arange(batch, device=flat.device)[:, None]
            all_deltas.append(deltas[batch_idx, base, :, pixel])  # (B, k, dim)
            all_anchors.append(anchors[pixel * self.num_base_priors + base])
            all_scores.append(top_logits.sigmoid())
            all_labels.append(channel % num_classes)
        scores = torch.cat(all_scores, 1)  # (B, M)
        labels = torch.cat(all_labels, 1)
        keep = scores > score_thr
        anchors, deltas = torch.cat(all_anchors, 1), torch.cat(all_deltas, 1)
        bboxes = get_box_tensor(self.bbox_coder.decode(
            anchors.reshape(-1, anchors.size(-1)), deltas.reshape(-1, dim)))
        bboxes = bboxes.reshape(scores.size(0), -1, 4)
        if getattr(self.bbox_coder, 'clip_border', True):
            # (B, 1, 4) bounds: x against the image width, y against its height
            hw = bboxes.new_tensor([m['img_shape'][:2] for m in batch_img_metas])
            bboxes = bboxes.clamp(min=bboxes.new_zeros(1), max=hw[:, None, [1, 0, 1, 0]])
        if rescale:
            inv = bboxes.new_tensor([[1 / s for s in m['scale_factor']]
                                     for m in batch_img_metas])
            bboxes = bboxes * inv.repeat(1, 2)[:, None]
        min_size = cfg.get('min_bbox_size', -1)
        if min_size >= 0:
            keep &= (bboxes[..., 2] - bboxes[..., 0] > min_size) \
                & (bboxes[..., 3] - bboxes[..., 1] > min_size)

        num_imgs = scores.size(0)
        if with_nms and batched_nms_supports(cfg['nms']):
            # one class-wise NMS for the whole batch, equal to mmcv's per-image batched_nms
            img_ids = torch.arange(num_imgs, device=keep.device)[:, None].expand_as(keep)[keep]
            cand = InstanceData(bboxes=bboxes[keep], scores=scores[keep], labels=labels[keep])
            return [cand[k] for k in batched_nms_batch(
                cand.bboxes, cand.scores, cand.labels, img_ids, num_imgs, cfg['nms'],
                cfg['max_per_img'])]
        results = []
        for i in range(num_imgs):
            res = InstanceData(bboxes=bboxes[i][keep[i]], scores=scores[i][keep[i]],
                               labels=labels[i][keep[i]])
            if with_nms and res.bboxes.numel() > 0:
                # NMS variants batched_nms_batch does not implement (e.g. soft_nms): mmcv's
                dets, nms_keep = batched_nms(res.bboxes, res.scores, res.labels, cfg['nms'])
                res = res[nms_keep]
                res.scores = dets[:, -1]
                res = res[:cfg['max_per_img']]
            results.append(res)
        return results
