"""Build-time checks of :class:`~.RetinaNetHead`'s arguments, each message naming the field."""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import torch.nn as nn
from mmdet.models.task_modules.samplers import PseudoSampler
from mmdet.registry import TASK_UTILS
from torch import Tensor

from ...utils.errors import RetinaConfigError


def check_head_args(num_classes: int, in_channels: int, feat_channels: int,
                    stacked_convs: int, prior_prob: float,
                    avg_factor_momentum: Optional[float]) -> None:
    """The head's sizes and probabilities (see :class:`~.RetinaNetHead` for their ranges)."""
    if num_classes < 1:
        raise RetinaConfigError(f'num_classes must be >= 1, got {num_classes}')
    if in_channels < 1 or feat_channels < 1:
        raise RetinaConfigError(f'in_channels and feat_channels must be >= 1, got '
                                f'{in_channels} and {feat_channels}')
    if stacked_convs < 0:
        raise RetinaConfigError(f'stacked_convs must be >= 0, got {stacked_convs}')
    if not 0.0 < prior_prob < 1.0:
        raise RetinaConfigError(f'prior_prob must be in (0, 1), got {prior_prob}')
    if avg_factor_momentum is not None and not 0.0 <= avg_factor_momentum < 1.0:
        raise RetinaConfigError(f'avg_factor_momentum must be None or in [0, 1), got '
                                f'{avg_factor_momentum}')


def check_shared_anchors(num_base_priors: Sequence[int]) -> None:
    """The same number of base anchors on every level: the convs are shared by the levels."""
    if len(set(num_base_priors)) != 1:
        raise RetinaConfigError('anchor_generator must give every level the same number of '
                                f'base anchors (shared convs), got {num_base_priors}')


def check_sigmoid_loss(loss: nn.Module, cfg: Mapping) -> None:
    """``loss_cls`` scores each class with a sigmoid: the head has no background logit."""
    # mmdet reads use_sigmoid from the config; the built loss knows its default too
    if not getattr(loss, 'use_sigmoid', cfg.get('use_sigmoid', False)):
        raise RetinaConfigError(
            f'loss_cls.use_sigmoid must be True, got {type(loss).__name__} with '
            'use_sigmoid=False (a softmax over K + 1 classes): RetinaNetHead scores each '
            'class with a sigmoid and has no background logit; use a sigmoid loss '
            "(RetinaFocalLoss, FocalLoss, CrossEntropyLoss(use_sigmoid=True)) or mmdet's "
            'RetinaHead')


def check_sampler(sampler: Optional[Mapping]) -> None:
    """Only ``PseudoSampler`` (every anchor a sample), however the config spells its type."""
    if sampler is None:
        return
    kind = sampler.get('type')
    if isinstance(kind, str):
        kind = TASK_UTILS.get(kind)
    if kind is not PseudoSampler:
        raise RetinaConfigError(
            f"train_cfg.sampler must be None or PseudoSampler, got {sampler.get('type')!r}: "
            'RetinaNetHead trains on every anchor (the focal loss replaces sampling); drop the '
            "sampler, or use mmdet's RetinaHead / AnchorHead for a sampled head")


def check_levels(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                 num_levels: int) -> List[Tuple[int, int]]:
    """One class map and one box map per anchor level; returns the levels' ``(Hi, Wi)``."""
    if len(cls_scores) != num_levels or len(bbox_preds) != len(cls_scores):
        raise RetinaConfigError(f'got {len(cls_scores)} cls / {len(bbox_preds)} box levels but '
                                f'anchor_generator.strides has {num_levels}')
    return [tuple(s.shape[-2:]) for s in cls_scores]


def check_feature_levels(feats: Sequence[Tensor], num_levels: int) -> List[Tuple[int, int]]:
    """One input map per anchor level; returns the levels' ``(Hi, Wi)``."""
    if len(feats) != num_levels:
        raise RetinaConfigError(f'got {len(feats)} feature levels but '
                                f'anchor_generator.strides has {num_levels}')
    return [tuple(f.shape[-2:]) for f in feats]


def check_static_num_gts(static_num_gts: Optional[int]) -> None:
    """None, or the gt count (>= 1) every training batch is padded to."""
    if static_num_gts is not None and (isinstance(static_num_gts, bool)
                                       or not isinstance(static_num_gts, int)
                                       or static_num_gts < 1):
        raise RetinaConfigError(f'static_num_gts must be None or an int >= 1, got '
                                f'{static_num_gts!r}')
