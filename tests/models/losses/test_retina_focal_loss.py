"""RetinaFocalLoss: parity with mmdet's FocalLoss, closed-form gradient, stability, errors.

All inputs are tiny, so the eager backend runs (no compile cost); the compiled CPU kernel is
covered by ``test_compiled_backend_matches_mmdet`` and by ``bench/bench_focal_loss.py``, which
checks parity before timing; the Triton kernel by ``test_triton_interpreter.py`` (CPU) and
``test_triton_backend_matches_mmdet`` (CUDA). Inputs of other shapes and every mmdet argument:
``test_focal_loss_dropin.py``.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS

import mmdet_retina_plugin  # noqa: F401  (registers RetinaFocalLoss)
from mmdet_retina_plugin.models.losses import RetinaFocalLoss, focal_backends
from mmdet_retina_plugin.models.losses import retina_focal_loss as rfl
from mmdet_retina_plugin.models.losses.focal_backends import FocalBackends

N, K = 48, 5
VALUE_RTOL, GRAD_RTOL = 1e-5, 1e-4


def make_inputs(seed=0, n=N, k=K, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, k, generator=g) * 3).to(dtype)
    labels = torch.randint(0, k + 1, (n,), generator=g)  # k = background
    labels[:3] = torch.arange(3)  # at least a few positives
    return pred, labels, g


def run(loss_fn, pred, target, weight=None, grad_out_seed=1, **kw):
    """Loss and d(sum(loss * R))/d pred for a fixed random R (exercises grad_output);
    ``grad_out_seed=None`` backpropagates a 0-d loss with grad_output 1."""
    p = pred.detach().clone().requires_grad_()
    loss = loss_fn(p, target, weight, **kw)
    if grad_out_seed is None:
        loss.backward()
    else:
        r = torch.randn(loss.shape, generator=torch.Generator().manual_seed(grad_out_seed),
                        dtype=loss.dtype).to(loss.device)
        (loss * r).sum().backward()
    return loss.detach(), p.grad


def assert_matches(ours, stock, rtol):
    # atol relative to the magnitude so that elementwise near-zero entries compare sensibly
    torch.testing.assert_close(ours, stock.to(ours.dtype), rtol=rtol,
                               atol=rtol * float(stock.abs().max()) + 1e-12)


def onehot(labels, k):
    return F.one_hot(labels, k + 1)[:, :k].float()


def soft(labels, k, g):
    """Soft targets in [0, 1]: every entry fractional, larger at the label."""
    return 0.7 * onehot(labels, k) + 0.3 * torch.rand(labels.shape[0], k, generator=g)


# avg_factor with 'sum' raises (test_invalid_call_raises); with 'none' it is ignored.
@pytest.mark.parametrize('reduction, avg_factor', [
    ('mean', None), ('mean', 7.0), ('mean', 'tensor'), ('sum', None), ('none', None),
    ('none', 7.0)])
@pytest.mark.parametrize('weight_kind', [None, 'anchor', 'element', 'flat'])
@pytest.mark.parametrize('target_kind', ['index', 'onehot', 'soft'])
def test_parity_with_mmdet(reduction, avg_factor, weight_kind, target_kind):
    pred, labels, g = make_inputs()
    target = {'index': labels, 'onehot': onehot(labels, K),
              'soft': soft(labels, K, g)}[target_kind]
    weight = {None: None, 'anchor': torch.rand(N, generator=g),
              'element': torch.rand(N, K, generator=g),
              'flat': torch.rand(N * K, generator=g)}[weight_kind]
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(5.0)
    cfg = dict(gamma=2.0, alpha=0.25, reduction=reduction, loss_weight=1.5)
    ours = run(RetinaFocalLoss(**cfg), pred, target, weight, avg_factor=avg_factor)
    stock = run(FocalLoss(**cfg), pred, target, weight, avg_factor=avg_factor)
    assert_matches(ours[0], stock[0], VALUE_RTOL)
    assert_matches(ours[1], stock[1], GRAD_RTOL)


@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize('alpha', [0.0, 0.25, 1.0])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
def test_parity_gamma_alpha(gamma, alpha, target_kind):
    pred, labels, g = make_inputs(seed=2)
    target = labels if target_kind == 'index' else soft(labels, K, g)
    for override in ('mean', 'none'):
        ours = run(RetinaFocalLoss(gamma=gamma, alpha=alpha), pred, target,
                   reduction_override=override)
        stock = run(FocalLoss(gamma=gamma, alpha=alpha), pred, target,
                    reduction_override=override)
        assert_matches(ours[0], stock[0], VALUE_RTOL)
        assert_matches(ours[1], stock[1], GRAD_RTOL)


def test_alpha_none_is_twice_alpha_half():
    # alpha_t = 0.5 for every element when alpha = 0.5, so dropping the term doubles the loss.
    pred, labels, g = make_inputs(seed=3)
    for target in (labels, soft(labels, K, g)):
        ours = run(RetinaFocalLoss(alpha=None, gamma=1.5), pred, target)
        stock = run(FocalLoss(alpha=0.5, gamma=1.5), pred, target)
        assert_matches(ours[0], 2 * stock[0], VALUE_RTOL)
        assert_matches(ours[1], 2 * stock[1], GRAD_RTOL)


@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_gamma0_alpha_none_is_bce(reduction):
    pred, labels, g = make_inputs(seed=4)
    weight = torch.rand(N, K, generator=g)
    for target in (labels, soft(labels, K, g)):
        dense = target if target.dim() == 2 else onehot(target, K)
        ours = run(RetinaFocalLoss(gamma=0.0, alpha=None, reduction=reduction), pred,
                   target, weight)
        bce = run(lambda p, t, w: F.binary_cross_entropy_with_logits(
            p, t, w, reduction=reduction), pred, dense, weight)
        assert_matches(ours[0], bce[0], VALUE_RTOL)
        assert_matches(ours[1], bce[1], GRAD_RTOL)


def test_onehot_float_equals_index_form():
    pred, labels, g = make_inputs(seed=5)
    weight = torch.rand(N, generator=g)
    for reduction in ('mean', 'sum', 'none'):
        loss = RetinaFocalLoss(reduction=reduction, gamma=1.5)
        by_index = run(loss, pred, labels, weight)
        by_onehot = run(loss, pred, onehot(labels, K), weight)
        assert_matches(by_onehot[0], by_index[0], 1e-6)
        assert_matches(by_onehot[1], by_index[1], 1e-6)


def test_labels_outside_range_are_background():
    pred, labels, _ = make_inputs(seed=6)
    odd = labels.clone()
    odd[labels == K] = -1
    odd[5] = K + 3
    as_k = labels.clone()
    as_k[5] = K
    ours = run(RetinaFocalLoss(reduction='none'), pred, odd)
    stock = run(FocalLoss(reduction='none'), pred, as_k)
    assert_matches(ours[0], stock[0], VALUE_RTOL)
    assert_matches(ours[1], stock[1], GRAD_RTOL)


def test_no_grad_forward_matches_mmdet():
    pred, labels, g = make_inputs(seed=7)
    weight = torch.rand(N, generator=g)
    with torch.no_grad():
        ours = RetinaFocalLoss()(pred, labels, weight, avg_factor=9)
        stock = FocalLoss()(pred, labels, weight, avg_factor=9)
    assert_matches(ours, stock, VALUE_RTOL)


@pytest.mark.parametrize('reduce', ['sum', 'none', 'segments'])
@pytest.mark.parametrize('gamma', [2.0, 1.5, 0.0])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
def test_gradcheck_float64(reduce, gamma, target_kind):
    pred, labels, g = make_inputs(seed=8, n=6, k=3, dtype=torch.float64)
    target = labels if target_kind == 'index' else soft(labels, 3, g).double()
    weight = torch.rand(6, 1, generator=g, dtype=torch.float64)
    avg_factor = torch.tensor(1.7, dtype=torch.float64)
    segments = (2, 1) if reduce == 'segments' else None

    def f(p):
        return rfl.SigmoidFocalLossFunction.apply(p, target, weight, avg_factor, 0.7, gamma,
                                                  0.25, segments, reduce != 'none', None)

    assert torch.autograd.gradcheck(f, (pred.requires_grad_(),))


def test_repeated_backward_with_retained_graph():
    # The first backward hands out the precomputed buffer; the second must recompute it.
    pred, labels, _ = make_inputs(seed=9)
    stock = run(lambda p, t, w: FocalLoss()(p, t, w, avg_factor=3), pred, labels,
                grad_out_seed=None)
    p = pred.clone().requires_grad_()
    loss = RetinaFocalLoss()(p, labels, avg_factor=3)
    loss.backward(retain_graph=True)
    assert_matches(p.grad.clone(), stock[1], GRAD_RTOL)
    loss.backward()
    assert_matches(p.grad, 2 * stock[1], GRAD_RTOL)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_finite_and_exact(dtype):
    # Rows: positive at +100 / -100, negative at +100 / -100 (class 0 of 1 class).
    pred = torch.tensor([[100.0], [-100.0], [100.0], [-100.0]], dtype=dtype)
    labels = torch.tensor([0, 0, 1, 1])
    loss, grad = run(RetinaFocalLoss(reduction='none'), pred, labels, grad_out_seed=0)
    p = pred.detach().clone().requires_grad_()
    RetinaFocalLoss(reduction='sum')(p, labels).backward()
    assert p.grad.dtype == dtype and torch.isfinite(p.grad).all()
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # Hand values (gamma 2, alpha .25): confident & right -> 0; confident & wrong -> alpha_t *
    # |x| with slope -/+ alpha_t (p_t^2 -> 1, the log term is linear in x).
    torch.testing.assert_close(loss.squeeze(1), torch.tensor([0.0, 25.0, 75.0, 0.0]))
    torch.testing.assert_close(p.grad.squeeze(1).float(), torch.tensor([0.0, -0.25, 0.75, 0.0]))


def test_soft_target_extreme_logits_finite():
    pred = torch.tensor([[100.0, -100.0, 30.0]]).requires_grad_()
    target = torch.tensor([[0.3, 0.7, 1.0]])
    loss = RetinaFocalLoss(gamma=0.5)(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()


def test_empty_input():
    pred = torch.zeros(0, K, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long)
    loss = RetinaFocalLoss(reduction='sum')(pred, labels)
    loss.backward()
    assert loss.item() == 0 and pred.grad.shape == (0, K)
    assert RetinaFocalLoss()(pred, labels, avg_factor=0).item() == 0


@pytest.mark.parametrize('kwargs, field', [
    (dict(gamma=-0.1), 'gamma'), (dict(alpha=1.5), 'alpha'), (dict(alpha=-0.1), 'alpha'),
    (dict(reduction='avg'), 'reduction'), (dict(use_sigmoid=False), 'use_sigmoid'),
    (dict(loss_weight=-1.0), 'loss_weight'), (dict(compile_min_numel=-1), 'compile_min_numel'),
])
def test_invalid_config_raises(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MODELS.build(dict(type='RetinaFocalLoss', **kwargs))


def test_invalid_call_raises():
    pred, labels, _ = make_inputs()
    loss = RetinaFocalLoss()
    with pytest.raises(ValueError, match='avg_factor'):
        loss(pred, labels, avg_factor=2.0, reduction_override='sum')
    with pytest.raises(ValueError, match='reduction_override'):
        loss(pred, labels, reduction_override='avg')
    with pytest.raises(ValueError, match='weight'):
        loss(pred, labels, torch.ones(N + 1))
    with pytest.raises(ValueError, match='target'):
        loss(pred, labels[:-1])
    with pytest.raises(ValueError, match='pred'):
        loss(pred[None], labels)


def test_registry_and_mmdet_config_swap():
    stock_cfg = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                     loss_weight=1.0)
    ours = MODELS.build(dict(stock_cfg, type='RetinaFocalLoss'))
    assert isinstance(ours, RetinaFocalLoss)
    assert isinstance(MODELS.build(dict(type='RetinaFocalLoss')), RetinaFocalLoss)
    pred, labels, _ = make_inputs()
    assert_matches(ours(pred, labels, avg_factor=4), MODELS.build(stock_cfg)(
        pred, labels, avg_factor=4), VALUE_RTOL)


@pytest.fixture
def fresh_backends(monkeypatch):
    """A new, unbuilt backend set (no compiled kernel, no failures) for one test."""
    backends = FocalBackends()
    monkeypatch.setattr(rfl, 'BACKENDS', backends)
    return backends


def test_backend_failure_falls_back_to_eager(monkeypatch, fresh_backends):
    # A torch without an API the compiled path calls (mark_dynamic stands for any of them).
    def missing(*args):
        raise AttributeError("module 'torch._dynamo' has no attribute 'mark_dynamic'")

    monkeypatch.setattr(torch._dynamo, 'mark_dynamic', missing)
    pred, labels, _ = make_inputs(seed=10)
    loss = RetinaFocalLoss(compile_min_numel=0)
    with pytest.warns(UserWarning, match='torch.compile backend failed.*mark_dynamic'):
        ours = run(loss, pred, labels)
    with warnings.catch_warnings():
        # warned once, then eager silently
        warnings.filterwarnings('error', message='RetinaFocalLoss')
        again = run(loss, pred, labels)
    stock = run(FocalLoss(), pred, labels)
    for got in (ours, again):
        assert_matches(got[0], stock[0], VALUE_RTOL)
        assert_matches(got[1], stock[1], GRAD_RTOL)


def test_backend_choice(monkeypatch):
    cpu32, cpu64 = torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.float64)
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    assert rfl.BACKENDS.choose(cpu32, None) == 'eager'
    assert rfl.BACKENDS.choose(cpu32, 13) == 'eager'  # below the threshold
    assert rfl.BACKENDS.choose(cpu32, 12) == 'torch.compile'
    # Triton's interpreter runs kernels on CPU tensors; fp64 never goes to the fp32 kernel
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert rfl.BACKENDS.choose(cpu32, None) == 'triton'
    assert rfl.BACKENDS.choose(cpu64, 0) == 'torch.compile'
    # inside a compiled region the loss is traced as eager code
    monkeypatch.setattr(focal_backends, 'is_compiling', lambda: True)
    assert rfl.BACKENDS.choose(cpu64, 0) == 'eager'


def test_is_compiling_without_the_api(monkeypatch):
    # torch.compiler.is_compiling appeared in torch 2.3 (torch._dynamo's older one may go);
    # installs without them must not break.
    assert focal_backends.is_compiling() is False
    dynamo = torch._dynamo  # imported now: its import needs torch.compiler.is_compiling
    monkeypatch.delattr(torch.compiler, 'is_compiling')
    for value in (True, False):
        monkeypatch.setattr(dynamo, 'is_compiling', lambda: value)
        assert focal_backends.is_compiling() is value
    monkeypatch.delattr(dynamo, 'is_compiling')
    assert focal_backends.is_compiling() is False
    pred, labels, _ = make_inputs(seed=13)
    ours = run(RetinaFocalLoss(compile_min_numel=None), pred, labels)
    stock = run(FocalLoss(), pred, labels)
    assert_matches(ours[0], stock[0], VALUE_RTOL)
    assert_matches(ours[1], stock[1], GRAD_RTOL)


def test_compiled_backend_matches_mmdet(fresh_backends):
    pred, labels, g = make_inputs(seed=11, n=300, k=7)
    weight = torch.rand(300, generator=g)
    with warnings.catch_warnings():
        # a silent fallback to eager would hide a failure
        warnings.filterwarnings('error', message='RetinaFocalLoss')
        for n in (300, 211):  # a second batch size must reuse the dynamic kernel
            ours = run(RetinaFocalLoss(compile_min_numel=0), pred[:n], labels[:n],
                       weight[:n], avg_factor=5)
            stock = run(FocalLoss(), pred[:n], labels[:n], weight[:n], avg_factor=5)
            assert_matches(ours[0], stock[0], VALUE_RTOL)
            assert_matches(ours[1], stock[1], GRAD_RTOL)


def per_level_stock(pred, labels, weight, avg_factor, segments):
    """mmdet's FocalLoss called level by level, as mmdet's AnchorHead calls it."""
    per_image = [t.reshape(-1, sum(segments), *t.shape[1:]) for t in (pred, labels, weight)]
    return torch.stack([
        FocalLoss()(*(t.reshape(-1, *t.shape[2:]) for t in level), avg_factor=avg_factor)
        for level in zip(*(t.split(list(segments), 1) for t in per_image))])


@pytest.mark.parametrize('avg_factor', [5.0, torch.tensor(5.0)])
@pytest.mark.parametrize('compile_min_numel', [None, 0])
def test_segments_equal_stock_per_level(avg_factor, compile_min_numel, fresh_backends):
    segments = (12, 0, 8, 4)  # 24 anchors per image, 2 images; an empty level too
    pred, labels, g = make_inputs(seed=14, n=48)
    weight = torch.rand(48, generator=g)
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='RetinaFocalLoss')
        ours = RetinaFocalLoss(compile_min_numel=compile_min_numel)(
            pred, labels, weight, avg_factor=avg_factor, segments=segments)
    stock = per_level_stock(pred, labels, weight, avg_factor, segments)
    assert ours.shape == (4,)
    assert_matches(ours, stock, VALUE_RTOL)
    # gradients of any combination of the levels equal stock's
    mix = torch.tensor([1.0, 2.0, -0.5, 3.0])
    got = run(lambda p, t, w: RetinaFocalLoss(compile_min_numel=compile_min_numel)(
        p, t, w, avg_factor=avg_factor, segments=segments) @ mix, pred, labels, weight,
        grad_out_seed=None)
    want = run(lambda p, t, w: per_level_stock(p, t, w, avg_factor, segments) @ mix, pred,
               labels, weight, grad_out_seed=None)
    assert_matches(got[1], want[1], GRAD_RTOL)


@pytest.mark.parametrize('segments, reduction, match', [
    ((12, 12), 'none', 'segments needs'), ((7, 7), 'mean', 'divides'),
    ((0, 0), 'sum', 'divides'), ((-1, 25), 'mean', 'divides')])
def test_invalid_segments_raise(segments, reduction, match):
    pred, labels, _ = make_inputs(n=48)
    with pytest.raises(ValueError, match=match):
        RetinaFocalLoss(reduction=reduction)(pred, labels, segments=segments)


def test_compiles_fullgraph_with_segments_and_device_avg_factor():
    # Inside a compiled caller (e.g. a head's loss) the loss is traced without graph breaks.
    pred, labels, g = make_inputs(seed=15, n=48)
    weight, avg = torch.rand(48, generator=g), torch.tensor(6.0)
    loss = RetinaFocalLoss(compile_min_numel=None)

    def total(p):
        return (loss(p, labels, weight, avg_factor=avg, segments=(20, 4)) *
                torch.tensor([1.0, 3.0])).sum()

    torch._dynamo.reset()
    compiled = torch.compile(total, fullgraph=True, backend='eager')
    got = run(lambda p, t, w: compiled(p), pred, labels, grad_out_seed=None)
    want = run(lambda p, t, w: total(p), pred, labels, grad_out_seed=None)
    assert_matches(got[0], want[0], VALUE_RTOL)
    assert_matches(got[1], want[1], GRAD_RTOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
@pytest.mark.parametrize('gamma', [2.0, 1.5, 0.0])
def test_triton_backend_matches_mmdet(dtype, target_kind, gamma):
    pytest.importorskip('triton', reason='triton is not installed')
    pred, labels, g = make_inputs(seed=12, n=3000, k=80)
    target = labels if target_kind == 'index' else soft(labels, 80, g)
    weight = torch.rand(3000, generator=g)
    pred16 = pred.to(dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='RetinaFocalLoss')
        for reduction in ('mean', 'none'):
            ours = run(RetinaFocalLoss(gamma=gamma, reduction=reduction), pred16.cuda(),
                       target.cuda(), weight.cuda(), avg_factor=11)
            assert ours[1].dtype == dtype
            stock = run(FocalLoss(gamma=gamma, reduction=reduction), pred16.float(), target,
                        weight, avg_factor=11)
            assert_matches(ours[0].cpu(), stock[0], VALUE_RTOL)
            assert_matches(ours[1].float().cpu(), stock[1],
                           GRAD_RTOL if dtype == torch.float32 else 1e-2)
