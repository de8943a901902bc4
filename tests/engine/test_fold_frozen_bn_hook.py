"""RetinaFoldFrozenBNHook: frozen norms folded into their convolutions when testing starts,
not when validating, and not at all beside an EMAHook; a Runner trains and tests with it."""
from types import SimpleNamespace

import pytest
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import EMAHook
from mmengine.runner import Runner
from tiny_detector import tiny_config, tiny_data
from torch import nn

from mmdet_retina_plugin.models.layers import RetinaFrozenBN


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), RetinaFrozenBN(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         RetinaFrozenBN(2))


def test_folds_when_testing_starts_only():
    net = model()
    hook = HOOKS.build(dict(type='RetinaFoldFrozenBNHook'))
    runner = SimpleNamespace(model=net, hooks=[hook])
    hook.before_val(runner)
    hook.before_train(runner)
    assert isinstance(net[1], RetinaFrozenBN)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = net(x)
        hook.before_test(runner)
        got = net(x)
    assert isinstance(net[1], nn.Identity) and isinstance(net[4], nn.Identity)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_unwraps_a_model_wrapper(monkeypatch):
    net = model()
    monkeypatch.setattr('mmdet_retina_plugin.engine.hooks.fold_frozen_bn_hook.is_model_wrapper',
                        lambda m: isinstance(m, SimpleNamespace))
    HOOKS.build(dict(type='RetinaFoldFrozenBNHook')).before_test(
        SimpleNamespace(model=SimpleNamespace(module=net)))
    assert isinstance(net[1], nn.Identity)


def test_beside_an_ema_hook_nothing_is_folded(monkeypatch):
    logged = []
    monkeypatch.setattr('mmdet_retina_plugin.engine.hooks.fold_frozen_bn_hook.print_log',
                        lambda msg, **kwargs: logged.append(msg))
    net = model()
    runner = SimpleNamespace(model=net, hooks=[EMAHook()])
    HOOKS.build(dict(type='RetinaFoldFrozenBNHook')).before_test(runner)
    assert isinstance(net[1], RetinaFrozenBN)
    assert len(logged) == 1 and 'nothing folded' in logged[0]


@pytest.mark.parametrize('ema', [False, True])
def test_runner_trains_then_tests(tmp_path, ema):
    """A frozen-norm backbone trained, then tested with the hook, with and without mmdet's EMA
    (whose swap of the averaged weights would break on a folded model)."""
    root = tmp_path / 'data'
    tiny_data(str(root), num_train=4, num_val=2)
    cfg = tiny_config(f'{root}/', str(tmp_path / 'work'), max_iters=2)
    cfg.model.backbone.norm_cfg = dict(type='RetinaFrozenBN', requires_grad=False)
    cfg.model.test_cfg.score_thr = 0.0  # untrained: keep boxes for the evaluator
    cfg.custom_hooks.append(dict(type='RetinaFoldFrozenBNHook'))
    if ema:
        cfg.custom_hooks.append(dict(type='EMAHook', ema_type='ExpMomentumEMA',
                                     momentum=0.0002, update_buffers=True, priority=49))
    runner = Runner.from_cfg(cfg)
    model = runner.train()
    metrics = runner.test()
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    folded = not any(isinstance(m, RetinaFrozenBN) for m in model.modules())
    assert folded != ema
