"""Every config under configs/ loads, builds, takes one loss step, and its documented settings
reach the built modules.

Full configs (everything outside ``_base_`` folders) build their model with the backbone's
pretrained ``init_cfg`` removed (nothing is downloaded), run one ``mode='loss'`` forward on two
tiny images through the model's own data preprocessor, and backpropagate. ``_base_`` fragments
(model-only or data/schedule-only) only have to load.
"""
import math
from pathlib import Path
from typing import Callable, Dict, List

import pytest
import torch
from mmdet.models.losses import L1Loss, SmoothL1Loss
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.structures import InstanceData

from mmdet_retina_plugin.models.data_preprocessors import RetinaBucketPad
from mmdet_retina_plugin.models.dense_heads.retina_net_head import RetinaNetHead
from mmdet_retina_plugin.models.layers.frozen_batch_norm import RetinaFrozenBN

# explicit import: registers RetinaHardNegativeCELoss whether or not models/losses exports it
from mmdet_retina_plugin.models.losses.hard_negative_ce_loss import RetinaHardNegativeCELoss
from mmdet_retina_plugin.models.losses.retina_focal_loss import RetinaFocalLoss
from mmdet_retina_plugin.models.necks.retina_fpn import RetinaFPN
from mmdet_retina_plugin.models.task_modules.assigners.retina_iou_assigner import RetinaIoUAssigner
from mmdet_retina_plugin.utils.compiling import Compiler

CONFIG_ROOT = Path(__file__).resolve().parents[2] / 'configs'
ALL_CONFIGS = sorted(CONFIG_ROOT.rglob('*.py'))
FULL_CONFIGS = [p for p in ALL_CONFIGS if '_base_' not in p.parts]
FRAGMENTS = [p for p in ALL_CONFIGS if '_base_' in p.parts]
# (H, W) of the two test images: different sizes so the batch is padded
IMAGE_SIZES = [(96, 128), (128, 96)]


def config_id(path: Path) -> str:
    return str(path.relative_to(CONFIG_ROOT))


@pytest.fixture(scope='module', autouse=True)
def mmdet_scope(one_torch_thread):
    register_all_modules(init_default_scope=True)


def tiny_batch(num_classes: int) -> Dict[str, list]:
    """Two random uint8 images with two boxes each, labels in [0, num_classes)."""
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for h, w in IMAGE_SIZES:
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 90.0, 80.0]]),
            labels=torch.tensor([0, num_classes - 1]))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def model_num_classes(model_cfg) -> int:
    head = model_cfg.get('bbox_head') or model_cfg.roi_head.bbox_head
    return head.num_classes


def train_pipeline(cfg: Config) -> List[dict]:
    dataset = cfg.train_dataloader.dataset
    return (dataset.get('dataset') or dataset).pipeline  # RepeatDataset wraps the ms-3x one


# ---------------------------------------------------------------- documented settings
def check_plugin_retinanet(cfg: Config, model: torch.nn.Module) -> None:
    """The four plugin modules at mmdet parity settings (the base every retinanet config uses)."""
    assert isinstance(model.neck, RetinaFPN)
    assert model.neck.p6_source == 'input' and model.neck.start_level == 1
    assert isinstance(model.bbox_head, RetinaNetHead)
    assert model.bbox_head.prior_prob == 0.01
    assert isinstance(model.bbox_head.assigner, RetinaIoUAssigner)
    assert (model.bbox_head.assigner.pos_iou_thr, model.bbox_head.assigner.neg_iou_thr,
            model.bbox_head.assigner.min_pos_iou) == (0.5, 0.4, 0.0)


def check_focal(gamma: float, alpha: float) -> Callable:
    def check(cfg: Config, model: torch.nn.Module) -> None:
        loss_cls = model.bbox_head.loss_cls
        assert isinstance(loss_cls, RetinaFocalLoss)
        assert (loss_cls.gamma, loss_cls.alpha) == (gamma, alpha)
    return check


def check_parity_neck_and_box_loss(cfg: Config, model: torch.nn.Module) -> None:
    assert model.neck.relu_before_p7 is False
    assert type(model.bbox_head.loss_bbox) is L1Loss


def check_paper_neck_and_box_loss(cfg: Config, model: torch.nn.Module) -> None:
    assert model.neck.relu_before_p7 is True
    assert isinstance(model.bbox_head.loss_bbox, SmoothL1Loss)
    assert model.bbox_head.loss_bbox.beta == 0.11


def check_single_scale_1x(cfg: Config, model: torch.nn.Module) -> None:
    pipeline = train_pipeline(cfg)
    resize = next(t for t in pipeline if t['type'] == 'Resize')
    assert resize['scale'] == (1333, 800) and resize['keep_ratio']
    flip = next(t for t in pipeline if t['type'] == 'RandomFlip')
    assert flip['prob'] == 0.5
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.optim_wrapper.optimizer.lr == 0.01
    Compose(pipeline)  # every transform builds


def check_multi_scale_3x(cfg: Config, model: torch.nn.Module) -> None:
    pipeline = train_pipeline(cfg)
    resize = next(t for t in pipeline if t['type'] == 'RandomResize')
    assert resize['scale'] == [(1333, 640), (1333, 800)] and resize['keep_ratio']
    # 3x = 12 epochs over a dataset repeated 3 times
    assert cfg.train_dataloader.dataset.type == 'RepeatDataset'
    assert cfg.train_cfg.max_epochs * cfg.train_dataloader.dataset.times == 36
    assert cfg.optim_wrapper.optimizer.lr == 0.01
    Compose(pipeline)


def check_depth(depth: int) -> Callable:
    def check(cfg: Config, model: torch.nn.Module) -> None:
        assert model.backbone.depth == depth
        expansion = 1 if depth < 50 else 4
        assert model.neck.in_channels == [64 * expansion * 2**i for i in range(4)]
    return check


def check_amp(cfg: Config, model: torch.nn.Module) -> None:
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'


def check_bf16(cfg: Config, model: torch.nn.Module) -> None:
    """bf16 autocast."""
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'


def check_gpu_native(cfg: Config, model: torch.nn.Module) -> None:
    """Frozen BN as an affine, channels-last batches from pinned memory."""
    norms = [m for m in model.backbone.modules()
             if isinstance(m, (RetinaFrozenBN, torch.nn.modules.batchnorm._BatchNorm))]
    assert len(norms) == 53 and all(isinstance(m, RetinaFrozenBN) for m in norms)  # R50
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    preprocessor = model.data_preprocessor
    assert preprocessor.train_channels_last and preprocessor.test_channels_last
    assert preprocessor._non_blocking is True
    assert all(cfg[f'{split}_dataloader'].pin_memory for split in ('train', 'val', 'test'))
    assert [h.type for h in cfg.custom_hooks].count('RetinaChannelsLastHook') == 1


def check_static_shapes(cfg: Config, model: torch.nn.Module) -> None:
    """Two shape buckets that hold every batch of the 1333 x 800 keep-ratio resize (padded to
    32) of its orientation, fixed gt counts, and backbone, neck and head compiled into CUDA
    graphs."""
    resize = next(t for t in train_pipeline(cfg) if t['type'] == 'Resize')
    long, short = (math.ceil(s / 32) * 32 for s in resize['scale'])
    assert cfg.model.data_preprocessor.pad_size_divisor == 32
    assert [tuple(b) for b in cfg.model.data_preprocessor.shape_buckets] == [(short, long),
                                                                             (long, short)]
    assert cfg.train_dataloader.batch_sampler.type == 'AspectRatioBatchSampler'
    assert model.bbox_head.static_num_gts == 100
    assert cfg.model.bbox_head.compile_cfg == dict(mode='reduce-overhead')
    compile_hook = next(h for h in cfg.custom_hooks if h.type == 'RetinaCompileHook')
    assert compile_hook.modules == ['backbone', 'neck']
    assert compile_hook.compile_cfg == dict(mode='reduce-overhead')


def check_prior_bias(prior: float) -> Callable:
    def check(cfg: Config, model: torch.nn.Module) -> None:
        head = model.bbox_head
        assert head.prior_prob == prior
        head.init_weights()  # the head alone: no backbone checkpoint is loaded
        torch.testing.assert_close(head.retina_cls.bias.sigmoid(),
                                   torch.full_like(head.retina_cls.bias, prior))
    return check


def check_ohem(cfg: Config, model: torch.nn.Module) -> None:
    loss_cls = model.bbox_head.loss_cls
    assert isinstance(loss_cls, RetinaHardNegativeCELoss)
    assert loss_cls.neg_pos_ratio == 3.0


def check_rpn_assigner(cfg: Config, model: torch.nn.Module) -> None:
    assigner = model.rpn_head.assigner
    assert isinstance(assigner, RetinaIoUAssigner)
    assert (assigner.pos_iou_thr, assigner.neg_iou_thr, assigner.min_pos_iou,
            assigner.match_low_quality) == (0.7, 0.3, 0.3, True)


def check_faster_rcnn_retina_fpn(cfg: Config, model: torch.nn.Module) -> None:
    """RPN anchors and RoI extractor use exactly the strides RetinaFPN outputs."""
    neck = model.neck
    assert isinstance(neck, RetinaFPN)
    rpn_strides = [s[0] for s in model.rpn_head.prior_generator.strides]
    roi_strides = list(model.roi_head.bbox_roi_extractor.featmap_strides)
    assert rpn_strides == list(neck.strides) == [4, 8, 16, 32, 64]
    assert roi_strides == list(neck.strides[:len(roi_strides)])
    feats = model.extract_feat(torch.zeros(1, 3, 128, 160))
    assert [tuple(f.shape[-2:]) for f in feats] == \
        [(math.ceil(128 / s), math.ceil(160 / s)) for s in neck.strides]


def check_plugin_head_only(cfg: Config, model: torch.nn.Module) -> None:
    assert isinstance(model.bbox_head, RetinaNetHead)
    assert not isinstance(model.neck, RetinaFPN)


RETINA_R50_1X = [check_plugin_retinanet, check_focal(2.0, 0.25),
                 check_parity_neck_and_box_loss, check_single_scale_1x, check_depth(50),
                 check_prior_bias(0.01)]
EXPECTED: Dict[str, List[Callable]] = {
    'retinanet/retina-plugin_r50_fpn_1x_coco.py': RETINA_R50_1X,
    'retinanet/retina-plugin_r50_fpn_ms-640-800-3x_coco.py': [
        check_plugin_retinanet, check_focal(2.0, 0.25), check_parity_neck_and_box_loss,
        check_multi_scale_3x, check_depth(50)],
    'retinanet/retina-plugin_r50_fpn_amp-1x_coco.py': RETINA_R50_1X + [check_amp],
    'retinanet/retina-plugin_r50_fpn_gpu-1x_coco.py': RETINA_R50_1X + [check_gpu_native],
    'retinanet/retina-plugin_r50_fpn_bf16-1x_coco.py': RETINA_R50_1X + [check_gpu_native,
                                                                         check_bf16],
    'retinanet/retina-plugin_r50_fpn_bf16-static-1x_coco.py': RETINA_R50_1X + [
        check_gpu_native, check_bf16, check_static_shapes],
    'retinanet/retina-plugin_r101_fpn_1x_coco.py': [
        check_plugin_retinanet, check_parity_neck_and_box_loss, check_single_scale_1x,
        check_depth(101)],
    'retinanet/retina-plugin_r101_fpn_ms-640-800-3x_coco.py': [
        check_plugin_retinanet, check_parity_neck_and_box_loss, check_multi_scale_3x,
        check_depth(101)],
    'retinanet/retina-plugin_r18_fpn_1x_coco.py': [
        check_plugin_retinanet, check_parity_neck_and_box_loss, check_single_scale_1x,
        check_depth(18)],
    'retinanet/retina-plugin-paper_r50_fpn_1x_coco.py': [
        check_plugin_retinanet, check_paper_neck_and_box_loss, check_single_scale_1x,
        check_depth(50)],
    'retinanet/retina-plugin-paper_r101_fpn_ms-640-800-3x_coco.py': [
        check_plugin_retinanet, check_paper_neck_and_box_loss, check_multi_scale_3x,
        check_depth(101)],
    'ablations/retina-plugin_r50_fpn_fl-gamma0-alpha0p75_1x_coco.py': [
        check_plugin_retinanet, check_focal(0.0, 0.75)],
    'ablations/retina-plugin_r50_fpn_fl-gamma0p5-alpha0p5_1x_coco.py': [
        check_plugin_retinanet, check_focal(0.5, 0.5)],
    'ablations/retina-plugin_r50_fpn_fl-gamma1-alpha0p25_1x_coco.py': [
        check_plugin_retinanet, check_focal(1.0, 0.25)],
    'ablations/retina-plugin_r50_fpn_fl-gamma2-alpha0p25_1x_coco.py': [
        check_plugin_retinanet, check_focal(2.0, 0.25)],
    'ablations/retina-plugin_r50_fpn_fl-gamma5-alpha0p25_1x_coco.py': [
        check_plugin_retinanet, check_focal(5.0, 0.25)],
    'ablations/retina-plugin_r50_fpn_prior-none_1x_coco.py': [
        check_focal(2.0, 0.25), check_prior_bias(0.5)],
    'ablations/retina-plugin_r50_fpn_ohem-1to3-ce_1x_coco.py': [
        check_plugin_retinanet, check_ohem, check_single_scale_1x],
    'swaps/fcos-retina-focal_r50-caffe_fpn_gn-head_1x_coco.py': [check_focal(2.0, 0.25)],
    'swaps/atss-retina-focal_r50_fpn_1x_coco.py': [check_focal(2.0, 0.25)],
    'swaps/faster-rcnn-retina-rpn-assigner_r50_fpn_1x_coco.py': [check_rpn_assigner],
    'swaps/faster-rcnn_r50_retina-fpn_1x_coco.py': [check_faster_rcnn_retina_fpn],
    'swaps/retina-plugin-head_regnetx-800MF_fpn_1x_coco.py': [
        check_plugin_head_only, check_prior_bias(0.01)],
    'swaps/retina-plugin-head_pvt-t_fpn_1x_coco.py': [
        check_plugin_head_only, check_prior_bias(0.01)],
}


def test_every_config_of_ours_has_expectations():
    ours = {config_id(p) for p in FULL_CONFIGS
            if p.parts[len(CONFIG_ROOT.parts)] in ('retinanet', 'ablations', 'swaps')}
    assert ours == set(EXPECTED)


def test_basenames_unique():
    names = [p.name for p in ALL_CONFIGS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize('path', FRAGMENTS, ids=config_id)
def test_fragment_loads(path: Path):
    assert Config.fromfile(str(path))._cfg_dict


@pytest.mark.parametrize('path', FULL_CONFIGS, ids=config_id)
def test_config_builds_and_trains_one_step(path: Path):
    cfg = Config.fromfile(str(path))
    # no pretrained download: the backbone keeps its random init
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    for check in EXPECTED.get(config_id(path), []):
        check(cfg, model)
    if cfg.model.get('bbox_head', {}).get('compile_cfg'):
        # dynamo's tracing, without inductor's code generation (minutes on the CPU), and the
        # shape buckets the size of the test images instead of 800 x 1344
        model.bbox_head.dense_compiler = Compiler(dict(backend='eager', fullgraph=True))
        model.data_preprocessor.bucket_pad = RetinaBucketPad([(128, 160), (160, 128)])

    model.train()
    batch = model.data_preprocessor(tiny_batch(model_num_classes(cfg.model)), training=True)
    losses = model(**batch, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(math.isfinite(v) for v in log_vars.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _train_dataset(cfg: Config) -> dict:
    dataset = cfg.train_dataloader.dataset
    return dataset.dataset if dataset.type == 'RepeatDataset' else dataset


@pytest.mark.parametrize('path', [p for p in FULL_CONFIGS if 'retinanet' in p.parts],
                         ids=config_id)
def test_training_configs_carry_the_reliability_pieces(path: Path):
    cfg = Config.fromfile(str(path))
    assert cfg.default_hooks.checkpoint.type == 'RetinaAtomicCheckpointHook'
    assert [h.type for h in cfg.custom_hooks].count('RetinaNonFiniteGuardHook') == 1
    dataset = _train_dataset(cfg)
    assert dataset.type == 'RetinaCocoDataset'
    types = [t.type for t in dataset.pipeline]
    assert types.index('RetinaSanitizeGt') == types.index('LoadAnnotations') + 1
    Compose(dataset.pipeline)  # every transform is registered and builds


def test_demo_configs_start_from_the_same_weights():
    """The demo's three detectors start from identical weights under one seed (our modules draw
    the same initial values as mmdet's) and differ only where they should: ours adds the
    normaliser's moving average, parity is ours without it."""
    states = {}
    for name in ('retinanet_shapes', 'retinanet_shapes_parity', 'retinanet_shapes_stock'):
        cfg = Config.fromfile(str(CONFIG_ROOT / 'demo' / f'{name}.py'))
        torch.manual_seed(cfg.randomness.seed)
        model = MODELS.build(cfg.model)
        model.init_weights()
        states[name] = model.state_dict()
    stock = states.pop('retinanet_shapes_stock')
    # 0 means 'not started': the first training step's count becomes the average
    assert states['retinanet_shapes'].pop('bbox_head.avg_factor_ema').item() == 0
    for state in states.values():
        assert list(state) == list(stock)
        for name, stock_value in stock.items():
            torch.testing.assert_close(state[name], stock_value, rtol=0, atol=0, msg=name)
    plugin = Config.fromfile(str(CONFIG_ROOT / 'demo' / 'retinanet_shapes.py')).model
    parity = Config.fromfile(str(CONFIG_ROOT / 'demo' / 'retinanet_shapes_parity.py')).model
    assert plugin.bbox_head.pop('avg_factor_momentum') == 0.9
    assert parity.bbox_head.pop('avg_factor_momentum') is None
    assert plugin == parity


def test_demo_configs_share_everything_but_the_model():
    """Ours, parity and stock differ only in the detector: data, schedule, optimizer and hooks
    (the final PreciseBN pass included) are the shared recipe's."""
    cfgs = [Config.fromfile(str(CONFIG_ROOT / 'demo' / f'{name}.py')).to_dict()
            for name in ('retinanet_shapes', 'retinanet_shapes_parity', 'retinanet_shapes_stock')]
    for cfg in cfgs:
        cfg.pop('model')
    assert cfgs[0] == cfgs[1] == cfgs[2]
    assert cfgs[0]['custom_hooks'] == [dict(type='RetinaPreciseBNHook', num_iters=200,
                                            interval=cfgs[0]['max_epochs'])]
