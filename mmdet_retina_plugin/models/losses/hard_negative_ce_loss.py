"""Sigmoid cross-entropy with OHEM-style hard-negative mining (the focal-loss paper's baseline).

Focal Loss paper (Lin et al., 2017), Table 1d: "OHEM 1:3" trains the same RetinaNet with plain
cross-entropy, keeps every positive anchor and only the highest-loss negatives at one positive to
three negatives, and drops the rest. This loss reproduces that baseline so the ablation configs can
swap it in as ``loss_cls`` of :class:`RetinaNetHead` (or mmdet's ``RetinaHead``).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor

from ...utils.errors import RetinaConfigError

_REDUCTIONS = ('none', 'mean', 'sum')


@MODELS.register_module()
class RetinaHardNegativeCELoss(nn.Module):
    """Per-anchor sigmoid BCE keeping all positives and the hardest ``neg_pos_ratio`` negatives.

    Mining pools every anchor of one ``forward`` call: under :class:`RetinaNetHead` (one call over
    all levels of the whole batch) the hardest negatives are ranked across the batch, under mmdet's
    ``AnchorHead`` (one call per pyramid level) per level across the batch. SSD mines per image.

    Args:
        use_sigmoid: Must be True; the head reads it to emit K sigmoid logits (no background
            logit). Kept as an argument because mmdet's heads look it up in ``loss_cls``.
        neg_pos_ratio: Negatives kept per positive, > 0. The count kept is
            ``max(floor(neg_pos_ratio * num_pos), min_negatives)``, capped by the negatives present.
        min_negatives: Lower bound (>= 0) on the negatives kept, which decides how many are trained
            when a call has no (or very few) positives. 0 reproduces SSD-style mining, where a call
            without positives contributes no loss.
        reduction: Default reduction, one of 'none', 'mean', 'sum'.
        loss_weight: Multiplier of the loss, >= 0.
    """

    def __init__(self,
                 use_sigmoid: bool = True,
                 neg_pos_ratio: float = 3.0,
                 min_negatives: int = 0,
                 reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if use_sigmoid is not True:
            raise RetinaConfigError(f'use_sigmoid must be True (only sigmoid classification is '
                                    f'supported), got {use_sigmoid!r}')
        if not neg_pos_ratio > 0:
            raise RetinaConfigError(f'neg_pos_ratio must be > 0, got {neg_pos_ratio!r}')
        if isinstance(min_negatives, bool) or not isinstance(min_negatives, int) \
                or min_negatives < 0:
            raise RetinaConfigError(f'min_negatives must be an int >= 0, got {min_negatives!r}')
        if reduction not in _REDUCTIONS:
            raise RetinaConfigError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r}')
        if not loss_weight >= 0:
            raise RetinaConfigError(f'loss_weight must be >= 0, got {loss_weight!r}')
        self.use_sigmoid = use_sigmoid
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.min_negatives = min_negatives
        self.reduction = reduction
        self.loss_weight = float(loss_weight)

    def mine(self, anchor_loss: Tensor, is_pos: Tensor, is_neg: Tensor) -> Tensor:
        """Select the anchors that contribute to the loss.

        Args:
            anchor_loss: (N,) per-anchor loss used to rank negatives (only read, no gradient).
            is_pos: (N,) bool, positive anchors (all kept).
            is_neg: (N,) bool, candidate negative anchors.

        Returns:
            (N,) bool mask: every positive plus the ``k`` negatives with the largest loss.
        """
        num_keep = torch.clamp(
            torch.floor(is_pos.sum() * self.neg_pos_ratio), min=self.min_negatives)
        # Rank negatives by loss without a host sync (no .item()/topk with a tensor k): sort once,
        # scatter each anchor's rank back, keep ranks below k. Non-negatives sort last (-inf).
        scores = anchor_loss.detach().masked_fill(~is_neg, float('-inf'))
        order = scores.argsort(descending=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return is_pos | (is_neg & (rank < num_keep))

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Compute the mined loss.

        Args:
            pred: (N, K) classification logits, one sigmoid per class.
            target: (N,) long labels; values in [0, K) are the positive's class, K is background.
            weight: None, (N,) per-anchor or (N, K) per-class weights. Anchors whose weights are
                all 0 (e.g. ignored anchors) are neither positives nor negative candidates.
            avg_factor: Normaliser for reduction 'mean', normally the number of positives. When
                None, 'mean' averages over the kept anchors (per-anchor loss summed over classes).
            reduction_override: Overrides ``self.reduction`` for this call.

        Returns:
            Scalar for 'mean'/'sum'; (N, K) for 'none', with dropped anchors set to 0.
        """
        reduction = reduction_override or self.reduction
        if reduction not in _REDUCTIONS:
            raise RetinaConfigError(f'reduction_override must be one of {_REDUCTIONS}, '
                                    f'got {reduction!r}')
        if reduction == 'sum' and avg_factor is not None:
            raise RetinaConfigError('avg_factor can not be used with reduction="sum"')
        if pred.dim() != 2 or target.shape != pred.shape[:1]:
            raise RetinaConfigError(
                f'expected pred (N, K) and target (N,), got {tuple(pred.shape)} '
                f'and {tuple(target.shape)}')
        num_classes = pred.size(1)
        # one_hot over K+1 then dropping the background column maps label K to all-zero targets.
        onehot = F.one_hot(target, num_classes + 1)[:, :num_classes].to(pred.dtype)
        loss = F.binary_cross_entropy_with_logits(pred, onehot, reduction='none')
        valid = torch.ones_like(target, dtype=torch.bool)
        if weight is not None:
            weight = weight.to(pred.dtype)
            if weight.dim() == 1:
                weight = weight[:, None]
            loss = loss * weight
            valid = weight.expand_as(loss).sum(dim=1) > 0
        keep = self.mine(loss.sum(dim=1), valid & (target < num_classes),
                         valid & (target == num_classes))
        loss = loss * keep[:, None].to(loss.dtype)
        if reduction == 'sum':
            loss = loss.sum()
        elif reduction == 'mean':
            denom = avg_factor if avg_factor is not None else keep.sum().clamp(min=1)
            # eps: avg_factor can be 0 when a batch has no positives (same guard as mmdet).
            loss = loss.sum() / (denom + torch.finfo(torch.float32).eps)
        return self.loss_weight * loss
