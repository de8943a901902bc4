"""The tests' tiny RetinaNet: the demo's config at test size, on tiny generated data.

One builder, :func:`tiny_config`, derived from the demo's shared base
(``configs/demo/_base_/retinanet_shapes_common.py``): the plugin's four modules, the reliability
pieces (``RetinaCocoDataset``, ``RetinaSanitizeGt``, ``RetinaNonFiniteGuardHook``,
``RetinaAtomicCheckpointHook``), and everything shrunk so a training iteration takes well under a
second on one CPU core: 64 px images, ResNet-18 with 8 base channels, 16-channel FPN and head,
batch 2, no workers and no random augmentation (so a resumed run can be compared bit for bit).
Nothing is downloaded: the backbone starts from scratch.

Imported by name: ``tests/conftest.py`` puts this folder on ``sys.path``.
"""
import os.path as osp
from typing import Dict, Optional, Sequence

from mmengine.config import Config

from mmdet_retina_plugin.datasets.synthetic_shapes import make_dataset

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_BASE = osp.join(REPO, 'configs', 'demo', '_base_', 'retinanet_shapes_common.py')
IMAGE_SIZE = 64
# Linear warm-up iterations; fixed, so that a run's schedule does not depend on its length.
WARMUP_ITERS = 4


def tiny_data(root: str, num_train: int = 8, num_val: int = 2,
              image_size: Sequence[int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Dict[str, object]:
    """Writes a tiny shapes data set under ``root`` (seed 0, shapes of 12 to 40 px).

    Args:
        root (str): output directory.
        num_train (int): training images.
        num_val (int): validation images.
        image_size (Sequence[int]): ``(H, W)`` of every image in pixels, each >= 40.

    Returns:
        Dict[str, object]: what :func:`make_dataset` returns (annotation files, image folders,
        classes).
    """
    return make_dataset(root, num_train, num_val, image_size=image_size, seed=0,
                        object_size=(12, 40))


def tiny_config(data_root: str = 'unused/', work_dir: str = 'unused', max_iters: int = 8,
                max_epochs: Optional[int] = None, ckpt_interval: int = 2,
                max_keep_ckpts: int = 1, atomic: bool = True, batch_size: int = 2) -> Config:
    """A Runner config training the tiny RetinaNet; no validation, the test split on ``val``.

    Args:
        data_root (str): root of a :func:`tiny_data` data set, ending in ``/``.
        work_dir (str): the Runner's work directory.
        max_iters (int): iterations to train (``IterBasedTrainLoop``), unless ``max_epochs``.
        max_epochs (Optional[int]): epochs to train instead (``EpochBasedTrainLoop``).
        ckpt_interval (int): a checkpoint every this many iterations (epochs with
            ``max_epochs``), and one after the last.
        max_keep_ckpts (int): checkpoints kept on disk.
        atomic (bool): checkpoints by ``RetinaAtomicCheckpointHook`` instead of mmengine's
            ``CheckpointHook``.
        batch_size (int): training images per iteration.

    Returns:
        Config: the complete config (seed 0, deterministic).
    """
    cfg = Config.fromfile(DEMO_BASE)
    model = cfg.model
    model.backbone.base_channels = 8
    # P6 from C5 and the start level stated: RetinaFPN's defaults are mmdet FPN's.
    model.neck = dict(type='RetinaFPN', in_channels=[16, 32, 64], out_channels=16,
                      start_level=0, num_outs=4, p6_source='input', strides=(8, 16, 32, 64))
    model.bbox_head.update(type='RetinaNetHead', in_channels=16, feat_channels=16,
                           stacked_convs=1, prior_prob=0.01)
    model.bbox_head.loss_cls.type = 'RetinaFocalLoss'
    model.train_cfg.assigner.type = 'RetinaIoUAssigner'
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='RetinaSanitizeGt', min_size=1.0),
        dict(type='PackDetInputs'),
    ]
    cfg.train_dataloader = dict(
        batch_size=batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='RetinaCocoDataset', data_root=data_root,
                     metainfo=dict(classes=cfg.classes), ann_file='annotations/train.json',
                     data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=False),
                     pipeline=pipeline))
    cfg.test_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.test_evaluator.ann_file = data_root + 'annotations/val.json'
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg'):
        cfg[key] = None
    by_epoch = max_epochs is not None
    if by_epoch:
        cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                             val_interval=10 ** 9)
    else:
        cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 9)
    cfg.optim_wrapper = dict(type='OptimWrapper',
                             optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
                             clip_grad=dict(max_norm=10, norm_type=2))
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                end=WARMUP_ITERS)]
    cfg.custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip')]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(
        type='RetinaAtomicCheckpointHook' if atomic else 'CheckpointHook', by_epoch=by_epoch,
        interval=ckpt_interval, max_keep_ckpts=max_keep_ckpts, save_last=True)
    cfg.default_hooks.visualization = dict(type='DetVisualizationHook', draw=False)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=by_epoch)
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
                       dist_cfg=dict(backend='gloo'))
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    return cfg
