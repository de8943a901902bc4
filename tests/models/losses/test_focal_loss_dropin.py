"""RetinaFocalLoss as a drop-in for mmdet's FocalLoss: every argument, every input form.

Each test builds ours and stock ``FocalLoss`` with the same arguments, feeds both the same
inputs and compares the loss and ``d loss / d pred``. On CPU tensors with class-index targets
stock one-hots them and runs ``py_sigmoid_focal_loss``; with ``activated=True`` it runs
``py_focal_loss_with_prob``: those are the references.
"""
import inspect
from typing import Dict, Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdet.models.losses import FocalLoss
from torch import Tensor

from mmdet_retina_plugin.models.losses import RetinaFocalLoss

# Relative tolerances: of the loss per computing dtype (ours computes fp16 / bf16 in fp32),
# of the gradient per input dtype (returned in it, so rounded to its precision).
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
GRAD_RTOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 1e-3,
             torch.bfloat16: 8e-3}


def loss_and_grad(module: torch.nn.Module, pred: Tensor, target: Tensor,
                  weight: Optional[Tensor], call: Dict) -> Tuple[Tensor, Tensor]:
    """The loss and the gradient of ``sum(loss * r)`` for a fixed random ``r``."""
    p = pred.detach().clone().requires_grad_()
    loss = module(p, target, weight, **call)
    r = torch.rand(loss.shape, generator=torch.Generator().manual_seed(7)).to(loss.dtype)
    (loss * r).sum().backward()
    return loss.detach(), p.grad


def close(ours: Tensor, stock: Tensor, rtol: float) -> None:
    """``ours == stock`` up to ``rtol`` of the largest entry (nan where stock is nan)."""
    assert ours.shape == stock.shape
    scale = float(stock.abs().nan_to_num().max()) if stock.numel() else 0.0
    torch.testing.assert_close(ours, stock.to(ours.dtype), rtol=rtol,
                               atol=rtol * scale + 1e-12, equal_nan=True)


def check(cfg: Dict, pred: Tensor, target: Tensor, weight: Optional[Tensor] = None,
          stock_pred: Optional[Tensor] = None, rtol: Optional[float] = None,
          **call: object) -> None:
    """Ours on ``pred`` vs stock on ``stock_pred`` (default: ``pred``), same everything else."""
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    loss, grad = loss_and_grad(RetinaFocalLoss(**cfg), pred, target, weight, call)
    ref_loss, ref_grad = loss_and_grad(FocalLoss(**cfg), pred if stock_pred is None
                                       else stock_pred, target, weight, call)
    close(loss, ref_loss, rtol or RTOL[dtype])
    assert grad.dtype == pred.dtype
    close(grad.to(dtype), ref_grad.to(dtype), rtol or GRAD_RTOL[pred.dtype])


def inputs(shape: Tuple[int, ...], target_kind: str, activated: bool, seed: int = 0,
           dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor, torch.Generator]:
    """Logits (probabilities if ``activated``) and a target: ``'index'`` (labels in
    ``[0, K]``, ``K`` background), ``'onehot'`` (0/1 floats of ``shape``), ``'soft'`` (floats in
    ``[0, 1]``), ``'background'`` (all-background labels)."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    if activated:
        # away from 0 and 1, where d BCE / d p reaches 1e12 (inf once rounded to fp16)
        pred = (pred / 2).sigmoid()
    if target_kind == 'index':
        target = torch.randint(0, shape[1] + 1, shape[:1], generator=g)
    elif target_kind == 'background':
        target = torch.full(shape[:1], shape[1], dtype=torch.long)
    elif target_kind == 'onehot':
        target = (torch.rand(shape, generator=g) < 0.3).float()
    else:
        target = torch.rand(shape, generator=g)
    return pred.to(dtype), target, g


def test_signature_is_mmdets():
    """Every constructor / forward argument of stock exists in ours, same default, same
    position."""
    for name in ('__init__', 'forward'):
        stock = list(inspect.signature(getattr(FocalLoss, name)).parameters.values())
        ours = list(inspect.signature(getattr(RetinaFocalLoss, name)).parameters.values())
        assert [(p.name, p.default) for p in ours[:len(stock)]] == \
            [(p.name, p.default) for p in stock]


# (reduction, avg_factor) pairs stock accepts: avg_factor is ignored with 'none'
REDUCTIONS = [('mean', None), ('mean', 6.5), ('sum', None), ('none', None), ('none', 3.0)]


@pytest.mark.parametrize('activated', [False, True])
@pytest.mark.parametrize('target_kind', ['onehot', 'soft'])
@pytest.mark.parametrize('shape', [(), (11,), (12, 5), (2, 3, 4), (3, 5, 40, 40)])
def test_any_shape_with_float_targets(shape, target_kind, activated):
    # (3, 5, 40, 40) is what mmdet's own FocalLoss unit test feeds
    pred, target, g = inputs(shape, target_kind, activated)
    for weighted in (False, True):
        weight = torch.rand(shape, generator=g) if weighted else None
        for reduction, avg_factor in REDUCTIONS:
            cfg = dict(gamma=1.5, alpha=0.3, reduction=reduction, loss_weight=0.7,
                       activated=activated)
            check(cfg, pred, target, weight, avg_factor=avg_factor)


@pytest.mark.parametrize('activated', [False, True])
@pytest.mark.parametrize('target_kind', ['index', 'onehot', 'soft', 'background'])
@pytest.mark.parametrize('weight_shape', [None, 'N', 'N1', 'NK', 'NK_flat', 'KN'])
def test_2d_weights_and_targets(weight_shape, target_kind, activated):
    n, k = 20, 6
    pred, target, g = inputs((n, k), target_kind, activated, seed=1)
    # mmdet's reshaping rules: (N, ...) with N elements is per anchor; N * K elements with
    # another first dimension are per element, in row-major order (so (K, N) too)
    shapes = {'N': (n,), 'N1': (n, 1), 'NK': (n, k), 'NK_flat': (n * k,), 'KN': (k, n)}
    weight = None if weight_shape is None else torch.rand(shapes[weight_shape], generator=g)
    for reduction, avg_factor in REDUCTIONS + [('mean', torch.tensor(4.0))]:
        cfg = dict(gamma=2.0, alpha=0.25, reduction=reduction, activated=activated)
        check(cfg, pred, target, weight, avg_factor=avg_factor)
    check(dict(activated=activated), pred, target, weight, reduction_override='sum')


@pytest.mark.parametrize('gamma', [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize('alpha', [0.0, 0.25, 1.0])
@pytest.mark.parametrize('activated', [False, True])
def test_gamma_alpha_loss_weight(gamma, alpha, activated):
    pred, target, _ = inputs((16, 4), 'index', activated, seed=2)
    for loss_weight in (0.0, 2.5):
        cfg = dict(gamma=gamma, alpha=alpha, loss_weight=loss_weight, activated=activated)
        check(cfg, pred, target, avg_factor=5)


@pytest.mark.parametrize('activated', [False, True])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
def test_float64(target_kind, activated):
    pred, target, g = inputs((30, 7), target_kind, activated, seed=3, dtype=torch.float64)
    if target_kind == 'soft':
        target = target.double()
    weight = torch.rand(30, 7, generator=g, dtype=torch.float64)
    for reduction in ('mean', 'none'):
        check(dict(gamma=1.5, reduction=reduction, activated=activated), pred, target, weight)


@pytest.mark.parametrize('activated', [False, True])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision(dtype, target_kind, activated):
    """Ours computes fp16 / bf16 input in fp32: it equals stock run in fp32 on the same
    (rounded) values, and stock run in the low precision up to that precision."""
    pred, target, g = inputs((40, 5), target_kind, activated, seed=4, dtype=dtype)
    weight = torch.rand(40, generator=g)
    for reduction in ('mean', 'none'):
        cfg = dict(reduction=reduction, activated=activated)
        check(cfg, pred, target, weight, stock_pred=pred.float(), avg_factor=9)
        low = target if target_kind == 'index' else target.to(dtype)
        check(cfg, pred, low, weight.to(dtype), rtol=2e-2, avg_factor=9)


@pytest.mark.parametrize('activated', [False, True])
def test_empty_inputs(activated):
    for shape, target_kind in (((0, 5), 'index'), ((0, 5), 'soft'), ((2, 0, 3), 'soft')):
        pred, target, _ = inputs(shape, target_kind, activated)
        for reduction, avg_factor in REDUCTIONS + [('mean', 0)]:
            check(dict(reduction=reduction, activated=activated), pred, target,
                  avg_factor=avg_factor)


def test_use_sigmoid_false_raises_at_build():
    with pytest.raises(AssertionError):  # stock refuses it too, at build time
        FocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match='use_sigmoid'):
        RetinaFocalLoss(use_sigmoid=False)
    with pytest.raises(ValueError, match='activated'):
        RetinaFocalLoss(activated='yes')


@pytest.mark.parametrize('activated', [False, True])
def test_avg_factor_with_sum_raises_as_mmdet(activated):
    pred, target, _ = inputs((8, 3), 'index', activated)
    for module in (FocalLoss(activated=activated), RetinaFocalLoss(activated=activated)):
        with pytest.raises(ValueError, match='avg_factor can not be used with reduction="sum"'):
            module(pred, target, avg_factor=2.0, reduction_override='sum')


@pytest.mark.parametrize('shape, weight_shape', [
    ((12, 5), (13,)), ((12, 5), (12, 5, 1)), ((12, 5), (1, 5)), ((12, 5), (12, 2)),
    ((12, 5), ()), ((3, 5, 4, 4), (3,)), ((3, 5, 4, 4), (3, 5, 1, 1)), ((3, 5, 4, 4), (240,)),
    ((7,), (7, 1)),
])
def test_weights_stock_refuses_raise_value_error(shape, weight_shape):
    pred, target, _ = inputs(shape, 'soft', False)
    weight = torch.rand(weight_shape)
    with pytest.raises((AssertionError, RuntimeError, IndexError)):
        FocalLoss()(pred, target, weight)
    with pytest.raises(ValueError, match='weight'):
        RetinaFocalLoss()(pred, target, weight)


@st.composite
def cases(draw: st.DrawFn) -> Dict:
    """One call: shape, dtype, target form, weight form, options."""
    index = draw(st.booleans())
    if index:
        shape = (draw(st.integers(0, 12)), draw(st.integers(1, 6)))
        target_kind = draw(st.sampled_from(['index', 'background']))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
        target_kind = draw(st.sampled_from(['onehot', 'soft']))
    weight_kinds = ['none', 'exact'] + (['anchor', 'flat'] if len(shape) == 2 else [])
    reduction = draw(st.sampled_from(['none', 'mean', 'sum']))
    avg_factor = None if reduction == 'sum' else draw(
        st.one_of(st.none(), st.floats(0, 50)))
    return dict(shape=shape, target_kind=target_kind,
                weight=draw(st.sampled_from(weight_kinds)),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])),
                seed=draw(st.integers(0, 2**16)),
                cfg=dict(gamma=draw(st.sampled_from([0.0, 2.0]) | st.floats(0, 4)),
                         alpha=draw(st.floats(0, 1)), reduction=reduction,
                         loss_weight=draw(st.floats(0, 3)),
                         activated=draw(st.booleans())),
                avg_factor=avg_factor)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(case=cases())
def test_matches_mmdet_on_drawn_cases(case):
    shape = case['shape']
    pred, target, g = inputs(shape, case['target_kind'], case['cfg']['activated'],
                             seed=case['seed'], dtype=case['dtype'])
    if target.is_floating_point():
        target = target.to(case['dtype'])
    n = shape[0] if shape else 1
    weight = {'none': None, 'exact': lambda: torch.rand(shape, generator=g),
              'anchor': lambda: torch.rand(n, generator=g),
              'flat': lambda: torch.rand(pred.numel(), generator=g)}[case['weight']]
    weight = weight() if weight is not None else None
    check(case['cfg'], pred, target, None if weight is None else weight.to(case['dtype']),
          avg_factor=case['avg_factor'])
