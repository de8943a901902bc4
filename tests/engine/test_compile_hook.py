"""RetinaCompileHook: the named submodules' forward compiled (the same outputs, one graph per
shape), the modules otherwise unchanged, deep copies bound to themselves, an eager fallback, and
arguments checked at build time. (The Runner runs it in ``tests/configs/test_static_config.py``.)
"""
import copy
from types import SimpleNamespace

import pytest
import torch
from functorch.compile import make_boxed_func
from mmdet.registry import HOOKS, MODELS
from torch._dynamo.backends.common import aot_autograd

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from mmdet_retina_plugin.utils.compiling import CompiledForward

GRAPHS = []


def counted(gm, example_inputs):
    GRAPHS.append(len(gm.graph.nodes))
    return make_boxed_func(gm.forward)


COUNTING = aot_autograd(fw_compiler=counted)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    GRAPHS.clear()
    yield
    torch._dynamo.reset()


def detector():
    torch.manual_seed(0)
    cfg = dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='ResNet', depth=18, base_channels=8, num_stages=4,
                      out_indices=(1, 2, 3), norm_eval=False, init_cfg=None),
        neck=dict(type='RetinaFPN', in_channels=[16, 32, 64], out_channels=16, start_level=0,
                  num_outs=4, p6_source='input', strides=(8, 16, 32, 64)),
        bbox_head=dict(type='RetinaNetHead', num_classes=3, in_channels=16, feat_channels=16,
                       stacked_convs=1, anchor_generator=dict(
                           type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                           ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64])))
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def hook(**kwargs):
    return HOOKS.build(dict(type='RetinaCompileHook', compile_cfg=dict(backend=COUNTING),
                            **kwargs))


def test_compiled_parts_give_the_same_features_and_gradients():
    eager, compiled = detector(), detector()
    params = list(compiled.parameters())
    keys = list(compiled.state_dict())
    hook().before_train(SimpleNamespace(model=compiled))
    assert list(compiled.parameters()) == params and list(compiled.state_dict()) == keys
    assert isinstance(compiled.backbone.forward, CompiledForward)
    assert isinstance(compiled.neck.forward, CompiledForward)
    assert 'forward' not in compiled.bbox_head.__dict__
    for shape in [(2, 3, 64, 96), (2, 3, 64, 96), (1, 3, 96, 64)]:
        x = torch.randn(shape)
        expected, got = eager.extract_feat(x), compiled.extract_feat(x)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        sum(f.sum() for f in got).backward()
        sum(f.sum() for f in expected).backward()
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert len(GRAPHS) == 8  # backbone and neck, forward and backward, for each of two shapes


def test_compiling_again_and_deep_copies():
    model = detector()
    compile_hook = hook(modules=['neck'])
    compile_hook.before_val(SimpleNamespace(model=model))
    first = model.neck.forward
    compile_hook.before_test(SimpleNamespace(model=model))
    assert model.neck.forward is first  # not wrapped twice
    assert 'forward' not in model.backbone.__dict__
    ema = copy.deepcopy(model)  # e.g. an EMA model: its compiled forward runs the copy
    assert ema.neck.forward.module is ema.neck
    with torch.no_grad():
        for p in ema.neck.parameters():
            p.zero_()
        feats = model.backbone(torch.randn(1, 3, 64, 64))
        assert not torch.equal(ema.neck(feats)[0], model.neck(feats)[0])


def test_a_failing_compile_warns_once_and_runs_eager():
    def broken(gm, example_inputs):
        raise RuntimeError('no compiler here')

    eager, model = detector(), detector()
    HOOKS.build(dict(type='RetinaCompileHook', modules=['backbone'],
                     compile_cfg=dict(backend=broken))).before_train(SimpleNamespace(model=model))
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match=r'RetinaCompileHook \(backbone\): compiling '
                                         r'forward failed'):
        got = model.backbone(x)
    for g, e in zip(got, eager.backbone(x)):
        torch.testing.assert_close(g, e)
    assert model.backbone.forward.compiler.failed


@pytest.mark.parametrize('kwargs, message', [
    (dict(modules=[]), 'modules must be a non-empty list'),
    (dict(modules='backbone'), 'modules must be a non-empty list'),
    (dict(modules=['backbone', '']), 'modules must be a non-empty list'),
    (dict(compile_cfg=dict(mode='fastest')), 'compile_cfg.mode'),
    (dict(compile_cfg=dict(cache=True)), 'compile_cfg keys'),
])
def test_bad_arguments_raise_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HOOKS.build(dict(type='RetinaCompileHook', **kwargs))


def test_a_missing_submodule_is_named():
    with pytest.raises(ValueError, match="no submodule 'roi_head'"):
        hook(modules=['backbone', 'roi_head']).before_train(SimpleNamespace(model=detector()))
