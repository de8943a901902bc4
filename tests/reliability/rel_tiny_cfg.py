"""Tiny RetinaNet training config on synthetic shapes, shared by the reliability tests.

Derived from ``configs/demo/_base_/retinanet_shapes_common.py`` with the plugin's four modules, the
reliability pieces (``RetinaCocoDataset``, ``RetinaSanitizeGt``, ``RetinaNonFiniteGuardHook``,
``RetinaAtomicCheckpointHook``) and everything shrunk so a training iteration takes well under a
second on one CPU core: 64 px images, ResNet-18 with 8 base channels, batch 2, no workers, no
random augmentation (so a resumed run can be compared bit for bit).
"""
import os.path as osp
from typing import Dict

from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_BASE = osp.join(REPO, 'configs', 'demo', '_base_', 'retinanet_shapes_common.py')
IMAGE_SIZE = 64


def make_data(root: str, num_train: int = 8, num_val: int = 2) -> Dict[str, object]:
    from mmdet_retina_plugin.datasets.synthetic_shapes import make_dataset
    return make_dataset(root, num_train, num_val, image_size=(IMAGE_SIZE, IMAGE_SIZE), seed=0,
                        object_size=(12, 40))


def tiny_cfg(data_root: str, work_dir: str, max_iters: int = 8, ckpt_interval: int = 2,
             max_keep_ckpts: int = 1, atomic: bool = True, batch_size: int = 2) -> Config:
    """Iteration-based training config; checkpoints every ``ckpt_interval`` iterations."""
    cfg = Config.fromfile(DEMO_BASE)
    model = cfg.model
    model.backbone.update(base_channels=8)
    model.neck = dict(type='RetinaFPN', in_channels=[16, 32, 64], out_channels=16,
                      start_level=0, num_outs=4, p6_source='input', strides=(8, 16, 32, 64))
    head = model.bbox_head
    head.update(type='RetinaNetHead', in_channels=16, feat_channels=16, stacked_convs=1,
                prior_prob=0.01,
                loss_cls=dict(type='RetinaFocalLoss', gamma=2.0, alpha=0.25, loss_weight=1.0))
    model.train_cfg.assigner = dict(type='RetinaIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                                    min_pos_iou=0.0)
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
    for key in ('val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator',
                'val_cfg', 'test_cfg'):
        cfg[key] = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 9)
    cfg.optim_wrapper = dict(type='OptimWrapper',
                             optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
                             clip_grad=dict(max_norm=10, norm_type=2))
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                end=max_iters)]
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(
        type='RetinaAtomicCheckpointHook' if atomic else 'CheckpointHook', by_epoch=False,
        interval=ckpt_interval, max_keep_ckpts=max_keep_ckpts, save_last=True)
    cfg.default_hooks.visualization = dict(type='DetVisualizationHook', draw=False)
    cfg.custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip')]
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
                       dist_cfg=dict(backend='gloo'))
    cfg.randomness = dict(seed=0, deterministic=True)
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    return cfg
