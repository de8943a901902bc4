"""The GPU-native configs (fp32: channels-last, frozen BN, pinned batches; bf16: the same in bf16
autocast): stock mmdet weights load strictly, and a training step of their model on CPU (fp32,
and bf16 under CPU autocast) gives the baseline's losses.

``AmpOptimWrapper`` refuses to build without a GPU: the CPU steps use a plain ``OptimWrapper``
with the same model, data preprocessor and channels-last hook.
"""
import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.structures import InstanceData

from bench.retinanet_r50 import retinanet_r50_model_cfg
from mmdet_retina_plugin.engine.hooks import RetinaChannelsLastHook
from mmdet_retina_plugin.models.layers import RetinaFrozenBN, fold_frozen_bn

CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / 'retinanet'
CL = torch.channels_last
GPU_CONFIG = 'retina-plugin_r50_fpn_gpu-1x_coco.py'
BF16_CONFIG = 'retina-plugin_r50_fpn_bf16-1x_coco.py'


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope(one_torch_thread):
    register_all_modules(init_default_scope=True)


def build(name: str) -> torch.nn.Module:
    cfg = Config.fromfile(str(CONFIGS / name))
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def stock_state() -> dict:
    """mmdet's own R50 RetinaNet, random weights and random backbone BN statistics."""
    torch.manual_seed(0)
    stock = MODELS.build(retinanet_r50_model_cfg(ours=False))
    stock.init_weights()
    with torch.no_grad():
        for m in stock.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return stock.state_dict()


def batch() -> dict:
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for h, w in [(96, 128), (128, 96)]:
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 90.0, 80.0]]),
            labels=torch.tensor([0, 79]))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def losses_and_grads(model: torch.nn.Module, autocast_bf16: bool = False):
    """A training step's forward and backward of ``model`` (its data preprocessor, loss,
    backward, as ``train_step`` runs them): its losses and the gradients of the head's
    classifier and of a backbone conv (the shortcut's: mmdet zero-initialises each block's
    last BN weight, which stops the gradient to the convs before it)."""
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast_bf16):
        data = model.data_preprocessor(batch(), training=True)
        loss, log_vars = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    grads = [model.bbox_head.retina_cls.weight.grad,
             model.backbone.layer2[0].downsample[0].weight.grad]
    return log_vars, [g.float() for g in grads]


def test_bf16_config_is_the_gpu_config_in_bf16():
    gpu, bf16 = (Config.fromfile(str(CONFIGS / name)) for name in (GPU_CONFIG, BF16_CONFIG))
    assert bf16.optim_wrapper.type == 'AmpOptimWrapper' and bf16.optim_wrapper.dtype == 'bfloat16'
    assert gpu.optim_wrapper.type == 'OptimWrapper'
    for key in ('model', 'custom_hooks', 'train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert gpu[key] == bf16[key], key
    assert bf16.optim_wrapper.optimizer == gpu.optim_wrapper.optimizer


def test_stock_r50_retinanet_loads_strictly(stock_state):
    ours = build(BF16_CONFIG)
    assert list(ours.state_dict()) == list(stock_state)
    ours.load_state_dict(stock_state, strict=True)
    for name in ('backbone.layer1.0.bn1.running_var', 'backbone.bn1.weight'):
        assert torch.equal(ours.state_dict()[name], stock_state[name])


def test_custom_hooks_build():
    cfg = Config.fromfile(str(CONFIGS / BF16_CONFIG))
    hooks = [HOOKS.build(h) for h in cfg.custom_hooks]
    assert [type(h).__name__ for h in hooks] == ['RetinaNonFiniteGuardHook',
                                                'RetinaChannelsLastHook',
                                                'RetinaFoldFrozenBNHook']


def test_fp32_training_step_equals_the_baselines(stock_state):
    """Channels-last frozen-BN model and batches vs the NCHW BatchNorm baseline: the same
    losses and gradients (to float32 rounding of another summation order)."""
    baseline = build('retina-plugin_r50_fpn_1x_coco.py')
    baseline.load_state_dict(stock_state, strict=True)
    ours = build(BF16_CONFIG)
    ours.load_state_dict(stock_state, strict=True)
    params = list(ours.parameters())
    RetinaChannelsLastHook().before_train(SimpleNamespace(model=ours))
    assert ours.backbone.conv1.weight.is_contiguous(memory_format=CL)
    assert list(ours.parameters()) == params  # the same objects: an optimizer keeps them
    # the preprocessor hands the network channels-last training batches
    assert ours.data_preprocessor(batch(), training=True)['inputs'].is_contiguous(
        memory_format=CL)

    expected, expected_grads = losses_and_grads(baseline)
    got, grads = losses_and_grads(ours)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4 * e.abs().max().item())


def test_bf16_autocast_training_step_runs_close_to_fp32(stock_state):
    ours = build(BF16_CONFIG)
    ours.load_state_dict(stock_state, strict=True)
    RetinaChannelsLastHook().before_train(SimpleNamespace(model=ours))
    expected, _ = losses_and_grads(copy.deepcopy(ours))
    got, grads = losses_and_grads(ours, autocast_bf16=True)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    for key in ('loss_cls', 'loss_bbox'):
        # bf16 keeps 8 bits of mantissa: a few per cent through 50 layers
        torch.testing.assert_close(got[key], expected[key], rtol=0.05, atol=1e-3, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='AmpOptimWrapper needs a GPU')
def test_on_a_gpu_the_config_trains_in_bf16_where_stock_fails(stock_state):
    cfg = Config.fromfile(str(CONFIGS / BF16_CONFIG))
    ours = build(BF16_CONFIG)
    ours.load_state_dict(stock_state, strict=True)
    ours.cuda()
    RetinaChannelsLastHook().before_train(SimpleNamespace(model=ours))
    wrapper = build_optim_wrapper(ours, cfg.optim_wrapper)
    assert wrapper.cast_dtype == torch.bfloat16
    data = batch()
    data['inputs'] = [t.pin_memory() for t in data['inputs']]
    log_vars = ours.train_step(data, wrapper)
    assert all(torch.isfinite(v).all() for v in log_vars.values())

    stock = MODELS.build(retinanet_r50_model_cfg(ours=False)).cuda()
    stock.load_state_dict(stock_state, strict=True)
    with pytest.raises(RuntimeError):  # mmcv's sigmoid_focal_loss has no bf16 kernel
        stock.train_step(batch(), build_optim_wrapper(stock, cfg.optim_wrapper))


def test_runner_trains_and_tests_the_gpu_config_on_tiny_data(tmp_path):
    """mmengine's Runner on the fp32 GPU config as mim runs it, on 4 + 2 synthetic 128 px
    images: the hooks, pinned loaders and preprocessor work together (on the CPU here)."""
    from mmengine.runner import Runner

    from mmdet_retina_plugin.datasets.synthetic_shapes import CLASSES, make_dataset

    root = tmp_path / 'data'
    make_dataset(str(root), num_train=4, num_val=2, image_size=(128, 128), seed=0)
    cfg = Config.fromfile(str(CONFIGS / GPU_CONFIG))
    cfg.model.backbone.init_cfg = None
    for loader, split in (('train', 'train'), ('val', 'val'), ('test', 'val')):
        loader = cfg[f'{loader}_dataloader']
        loader.update(batch_size=2, num_workers=0, persistent_workers=False)
        loader.dataset.update(data_root=f'{root}/', ann_file=f'annotations/{split}.json',
                              data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=CLASSES))
        for transform in loader.dataset.pipeline:
            if transform.type == 'Resize':
                transform.scale = (128, 128)
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        evaluator.ann_file = f'{root}/annotations/val.json'
    cfg.train_cfg.max_epochs = 1
    cfg.model.test_cfg.score_thr = 0.0  # untrained: keep boxes for the evaluator
    cfg.model.bbox_head.num_classes = len(CLASSES)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(cfg)
    assert runner.train_dataloader.pin_memory
    model = runner.train()
    assert model.backbone.conv1.weight.is_contiguous(memory_format=CL)  # the hook ran
    assert (tmp_path / 'work' / 'epoch_1.pth').is_file()
    assert isinstance(model.backbone.bn1, RetinaFrozenBN)  # validation folds nothing
    metrics = runner.test()
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    # testing folded the frozen norms, and the folded weights kept their layout
    assert not any(isinstance(m, RetinaFrozenBN) for m in model.modules())
    assert model.backbone.conv1.weight.is_contiguous(memory_format=CL)


def test_folding_the_frozen_norms_keeps_the_detections(stock_state):
    """What the config's RetinaFoldFrozenBNHook does before testing: R50's 53 frozen norms
    folded into their convolutions, channels-last, the same detections."""
    from bench.retinanet_r50 import spread_scores

    model = build(GPU_CONFIG)
    model.load_state_dict(stock_state, strict=True)
    spread_scores(model.bbox_head)  # random weights: scores spread over the threshold
    model.eval()
    model.to(memory_format=CL)
    data = batch()
    with torch.no_grad():
        want = model.test_step(data)
        assert fold_frozen_bn(model) == 53
        got = model.test_step(data)
    assert model.backbone.layer3[2].conv2.weight.is_contiguous(memory_format=CL)
    assert sum(len(s.pred_instances) for s in got) > 0
    for a, b in zip(want, got):  # the same set: scores a rounding apart may swap places
        a, b = a.pred_instances, b.pred_instances
        assert len(a) == len(b)
        unmatched = list(range(len(b)))
        for box, score, label in zip(a.bboxes, a.scores, a.labels):
            match = next(j for j in unmatched if b.labels[j] == label
                         and abs(b.scores[j] - score) < 1e-5
                         and torch.allclose(b.bboxes[j], box, atol=1e-3))
            unmatched.remove(match)
