"""The static-shape config (the bf16 config with shape buckets, fixed gt counts and a compiled
head), and mmengine's Runner training and testing the tiny detector the static way: compiled,
it trains to the same weights as eager, with one training graph (forward and backward) and one
inference graph for every batch of one bucket, for the head (``compile_cfg``) and for the
backbone and the neck (``RetinaCompileHook``).

The head is compiled with AOTAutograd and a backend that counts the graphs it is handed and runs
them as they are (inductor's code generation takes minutes on the CPU).
"""
from pathlib import Path

import pytest
import torch
from functorch.compile import make_boxed_func
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.runner import Runner
from tiny_detector import tiny_config, tiny_data
from torch._dynamo.backends.common import aot_autograd

from mmdet_retina_plugin.models.layers import RetinaFrozenBN

CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / 'retinanet'
BF16_CONFIG = 'retina-plugin_r50_fpn_bf16-1x_coco.py'
STATIC_CONFIG = 'retina-plugin_r50_fpn_bf16-static-1x_coco.py'
BACKEND = 'retina_test_graph_counter'
GRAPHS = []  # 'forward' / 'backward', one per graph the backend was handed


def _compiler(kind):
    def compile_graph(gm, example_inputs):
        GRAPHS.append(kind)
        return make_boxed_func(gm.forward)
    return compile_graph


if BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
    torch._dynamo.register_backend(
        aot_autograd(fw_compiler=_compiler('forward'), bw_compiler=_compiler('backward')),
        name=BACKEND)


def test_static_config_is_the_bf16_config_with_static_shapes():
    bf16, static = (Config.fromfile(str(CONFIGS / name)) for name in (BF16_CONFIG, STATIC_CONFIG))
    assert static.model.data_preprocessor.shape_buckets == [(800, 1344), (1344, 800)]
    assert static.model.bbox_head.pop('static_num_gts') == 100
    assert static.model.bbox_head.pop('compile_cfg') == dict(mode='reduce-overhead')
    static.model.data_preprocessor.pop('shape_buckets')
    assert static.custom_hooks.pop() == dict(type='RetinaCompileHook', modules=['backbone', 'neck'],
                                             compile_cfg=dict(mode='reduce-overhead'))
    for key in ('model', 'optim_wrapper', 'custom_hooks', 'train_dataloader', 'test_dataloader'):
        assert static[key] == bf16[key], key


def test_static_config_loads_the_baselines_checkpoints_strictly():
    register_all_modules(init_default_scope=True)
    models = []
    for name in (BF16_CONFIG, STATIC_CONFIG):
        cfg = Config.fromfile(str(CONFIGS / name))
        cfg.model.backbone.init_cfg = None
        models.append(MODELS.build(cfg.model))
    state = models[0].state_dict()
    assert list(models[1].state_dict()) == list(state)
    models[1].load_state_dict(state, strict=True)


def train_and_test(root, work_dir, compiled):
    cfg = tiny_config(f'{root}/', str(work_dir), max_iters=4, ckpt_interval=4)
    cfg.model.data_preprocessor.type = 'RetinaDataPreprocessor'
    cfg.model.data_preprocessor.shape_buckets = [(96, 96), (96, 128)]  # 64 px images: 96 x 96
    cfg.model.bbox_head.static_num_gts = 16
    # as in the static config: frozen backbone norms, folded when testing starts, before the
    # compile; channels-last weights and batches
    cfg.model.backbone.norm_cfg = dict(type='RetinaFrozenBN', requires_grad=False)
    cfg.model.data_preprocessor.train_channels_last = True
    cfg.custom_hooks += [dict(type='RetinaChannelsLastHook'), dict(type='RetinaFoldFrozenBNHook')]
    if compiled:
        cfg.model.bbox_head.compile_cfg = dict(backend=BACKEND)
        cfg.custom_hooks.append(dict(type='RetinaCompileHook', compile_cfg=dict(backend=BACKEND)))
    cfg.model.test_cfg.score_thr = 0.0  # untrained: keep boxes for the evaluator
    runner = Runner.from_cfg(cfg)
    model = runner.train()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics = runner.test()
    assert not any(isinstance(m, RetinaFrozenBN) for m in model.modules())
    return state, metrics


def test_runner_trains_and_tests_compiled_as_eager_with_one_graph_per_shape(tmp_path):
    root = tmp_path / 'data'
    tiny_data(str(root), num_train=8, num_val=2)
    torch._dynamo.reset()
    GRAPHS.clear()
    try:
        expected, expected_metrics = train_and_test(root, tmp_path / 'eager', compiled=False)
        assert GRAPHS == []
        got, metrics = train_and_test(root, tmp_path / 'compiled', compiled=True)
    finally:
        torch._dynamo.reset()
    # backbone, neck and head: 4 training steps of one shape, one forward and one backward
    # graph each; 2 test images of one shape, one inference graph each
    assert GRAPHS == ['forward'] * 3 + ['backward'] * 3 + ['forward'] * 3
    assert (tmp_path / 'compiled' / 'iter_4.pth').is_file()
    moved = 0
    for name, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-6, msg=name)
            moved += 1
    assert moved > 0
    assert metrics == pytest.approx(expected_metrics, abs=1e-3)
