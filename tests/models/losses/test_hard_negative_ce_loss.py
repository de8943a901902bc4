"""RetinaHardNegativeCELoss vs hand-computed values and mmdet's sigmoid CrossEntropyLoss."""
import math

import pytest
import torch
from mmdet.models.losses import CrossEntropyLoss
from mmdet.registry import MODELS

from mmdet_retina_plugin.models.losses.hard_negative_ce_loss import RetinaHardNegativeCELoss

K = 2  # classes; label 2 is background


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# Per-anchor loss = sum over classes of BCE; BCE(x, 0) = softplus(x), BCE(x, 1) = softplus(-x).
LOGITS = [
    [0.0, 0.0],    # a0 positive (class 0)
    [2.0, 0.0],    # a1 negative, 2.820
    [-3.0, -3.0],  # a2 negative, 0.097 (easiest)
    [1.0, 1.0],    # a3 negative, 2.627
    [3.0, -1.0],   # a4 negative, 3.362 (hardest)
    [0.0, -2.0],   # a5 negative, 0.820
]
LABELS = [0, K, K, K, K, K]


def anchor_loss(i: int) -> float:
    return sum(softplus(-x) if LABELS[i] == c else softplus(x) for c, x in enumerate(LOGITS[i]))


def inputs(labels=LABELS):
    pred = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    return pred, torch.tensor(labels)


def test_keeps_positive_and_three_hardest_negatives():
    pred, target = inputs()
    loss = RetinaHardNegativeCELoss()(pred, target, avg_factor=1.0)
    expected = sum(anchor_loss(i) for i in (0, 4, 1, 3))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # dropped easy negatives receive no gradient, kept anchors do
    assert torch.all(pred.grad[[2, 5]] == 0)
    assert torch.all(pred.grad[[0, 1, 3, 4]] != 0)


def test_matches_mmdet_sigmoid_ce_with_hand_picked_mask():
    pred, target = inputs()
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # a1 ignored
    ours = RetinaHardNegativeCELoss(neg_pos_ratio=2)(pred, target, weight, avg_factor=3.0)
    # with a1 ignored, the two hardest remaining negatives are a4 and a3
    mask = torch.tensor([1.0, 0, 0, 1, 1, 0], dtype=torch.float64)
    ref = CrossEntropyLoss(use_sigmoid=True)(pred, target, mask, avg_factor=3.0)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


def test_per_class_weight_and_ratio():
    pred, target = inputs()
    weight = torch.ones(6, K, dtype=torch.float64)
    weight[4, 0] = 0.0  # a4 keeps only class-1 term: softplus(-1) = 0.313, now an easy negative
    loss = RetinaHardNegativeCELoss(neg_pos_ratio=1.0)(pred, target, weight, avg_factor=2.0)
    assert loss.item() == pytest.approx((anchor_loss(0) + anchor_loss(1)) / 2.0, rel=1e-6)


def test_no_positives_uses_min_negatives():
    pred, target = inputs(labels=[K] * 6)
    none = RetinaHardNegativeCELoss()(pred, target, avg_factor=0.0)
    assert none.item() == 0.0
    two = RetinaHardNegativeCELoss(min_negatives=2)(pred, target, reduction_override='sum')
    a0_as_neg = 2 * softplus(0.0)
    assert two.item() == pytest.approx(anchor_loss(4) + anchor_loss(1), rel=1e-6)
    # min_negatives larger than available negatives keeps them all
    all_ = RetinaHardNegativeCELoss(min_negatives=100)(pred, target, reduction_override='sum')
    expected_all = a0_as_neg + sum(anchor_loss(i) for i in range(1, 6))
    assert all_.item() == pytest.approx(expected_all, rel=1e-6)


def test_reductions_and_loss_weight():
    pred, target = inputs()
    loss_fn = RetinaHardNegativeCELoss(loss_weight=0.5)
    elem = loss_fn(pred, target, reduction_override='none')
    assert elem.shape == (6, K)
    assert torch.all(elem[[2, 5]] == 0)
    assert elem[4, 0].item() == pytest.approx(0.5 * softplus(3.0), rel=1e-6)
    kept = (0, 4, 1, 3)
    mean = loss_fn(pred, target)  # no avg_factor: average over the 4 kept anchors
    assert mean.item() == pytest.approx(0.5 * sum(anchor_loss(i) for i in kept) / 4, rel=1e-6)
    with pytest.raises(ValueError, match='avg_factor'):
        loss_fn(pred, target, avg_factor=1.0, reduction_override='sum')


def test_registered_and_usable_by_anchor_heads():
    loss = MODELS.build(dict(type='RetinaHardNegativeCELoss', use_sigmoid=True, neg_pos_ratio=3))
    assert isinstance(loss, RetinaHardNegativeCELoss) and loss.use_sigmoid


@pytest.mark.parametrize('kwargs, field', [
    (dict(use_sigmoid=False), 'use_sigmoid'),
    (dict(neg_pos_ratio=0), 'neg_pos_ratio'),
    (dict(min_negatives=-1), 'min_negatives'),
    (dict(min_negatives=1.5), 'min_negatives'),
    (dict(reduction='avg'), 'reduction'),
    (dict(loss_weight=-1.0), 'loss_weight'),
])
def test_invalid_args(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RetinaHardNegativeCELoss(**kwargs)


def test_invalid_shapes():
    with pytest.raises(ValueError, match='pred'):
        RetinaHardNegativeCELoss()(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
