"""A tiny RetinaNet on tiny generated data, for tests and smoke runs through mmengine's Runner.

The model is the real detector built from this plugin's four modules, shrunk (ResNet-18 layout at
1/8 width, 16-channel FPN and head) so that an epoch over a few 96 px images takes a second on a
CPU. Nothing is downloaded: the backbone starts from scratch.
"""
import copy
import os
from typing import Any, Dict, Optional, Sequence

from mmengine.config import Config, ConfigDict

from .datasets.synthetic_shapes import make_dataset


def tiny_dataset(root: str, num_train: int = 8, num_val: int = 4,
                 image_size: Sequence[int] = (96, 96), seed: int = 0) -> Dict[str, object]:
    """Writes (or reuses) a tiny shapes data set under ``root``; see :func:`make_dataset`."""
    return make_dataset(root, num_train=num_train, num_val=num_val, image_size=image_size,
                        seed=seed, object_size=(12, 48))


def tiny_retinanet_config(data: Dict[str, object], work_dir: str, max_epochs: int = 1,
                          batch_size: int = 2, seed: int = 0,
                          extra: Optional[Dict[str, Any]] = None) -> Config:
    """A complete Runner config (train + val) for the tiny RetinaNet.

    Args:
        data: what :func:`tiny_dataset` returned.
        work_dir: the Runner's work directory.
        max_epochs: epochs to train; a checkpoint is written after each.
        batch_size: images per iteration.
        seed: the Runner's seed (deterministic mode is on, and the pipeline has no random
            transform, so two runs with one seed give the same weights).
        extra: merged into the config last (mmengine's merge rules), e.g. hooks.
    """
    classes = tuple(data['classes'])
    root = os.path.dirname(os.path.dirname(str(data['train_ann'])))
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=(96, 96), keep_ratio=True),
        dict(type='PackDetInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(96, 96), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ]

    def loader(split: str, shuffle: bool, pipe: list, test_mode: bool) -> dict:
        return dict(
            batch_size=batch_size, num_workers=0, persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
            dataset=dict(type='CocoDataset', data_root=root, metainfo=dict(classes=classes),
                         ann_file=f'annotations/{split}.json',
                         data_prefix=dict(img=f'{split}/'), test_mode=test_mode,
                         filter_cfg=dict(filter_empty_gt=False), pipeline=pipe))

    cfg = dict(
        custom_imports=dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False),
        default_scope='mmdet',
        work_dir=work_dir,
        randomness=dict(seed=seed, deterministic=True),
        model=dict(
            type='RetinaNet',
            data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                                   pad_size_divisor=32),
            backbone=dict(type='ResNet', depth=18, base_channels=8, stem_channels=8,
                          num_stages=4, out_indices=(1, 2, 3), norm_eval=False,
                          norm_cfg=dict(type='BN', requires_grad=True), init_cfg=None),
            neck=dict(type='RetinaFPN', in_channels=[16, 32, 64], out_channels=16,
                      start_level=0, num_outs=5),
            bbox_head=dict(
                type='RetinaNetHead', num_classes=len(classes), in_channels=16,
                stacked_convs=1, feat_channels=16,
                anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                      scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                      strides=[8, 16, 32, 64, 128]),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                                target_stds=[1.0] * 4),
                loss_cls=dict(type='RetinaFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                              loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
            train_cfg=dict(assigner=dict(type='RetinaIoUAssigner', pos_iou_thr=0.5,
                                         neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
                           sampler=dict(type='PseudoSampler'), allowed_border=-1,
                           pos_weight=-1, debug=False),
            test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                          nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
        train_dataloader=loader('train', True, pipeline, False),
        val_dataloader=loader('val', False, test_pipeline, True),
        val_evaluator=dict(type='CocoMetric', ann_file=str(data['val_ann']), metric='bbox'),
        train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs),
        val_cfg=dict(type='ValLoop'),
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
                           clip_grad=dict(max_norm=35, norm_type=2)),
        param_scheduler=[dict(type='MultiStepLR', by_epoch=True, milestones=[1], gamma=0.5)],
        default_hooks=dict(
            timer=dict(type='IterTimerHook'), logger=dict(type='LoggerHook', interval=1),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='CheckpointHook', interval=1),
            sampler_seed=dict(type='DistSamplerSeedHook')),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
        log_processor=dict(type='LogProcessor', window_size=1, by_epoch=True),
        log_level='WARNING',
        load_from=None,
        resume=False,
    )
    config = Config(cfg)
    if extra:
        config.merge_from_dict(extra)
    return config


def retinanet_r50_model_cfg(ours: bool) -> ConfigDict:
    """mmdet's ``retinanet_r50_fpn_1x_coco`` model config, optionally with our four modules
    swapped in at the parity settings (P6 from C5, no ReLU before P7, L1 box loss); the
    backbone's pretrained ``init_cfg`` is removed (nothing is downloaded).

    The parity tests and the side-by-side benchmarks build both detectors from this, so the
    two always compare the same architecture.
    """
    import mmdet
    path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', 'retinanet',
                        'retinanet_r50_fpn_1x_coco.py')
    cfg = copy.deepcopy(Config.fromfile(path).model)
    cfg.backbone.init_cfg = None
    if ours:
        cfg.neck = dict(type='RetinaFPN', in_channels=[256, 512, 1024, 2048], out_channels=256,
                        start_level=1, num_outs=5, p6_source='input', relu_before_p7=False)
        cfg.bbox_head.type = 'RetinaNetHead'
        cfg.bbox_head.loss_cls.type = 'RetinaFocalLoss'
        cfg.bbox_head.loss_bbox = dict(type='L1Loss', loss_weight=1.0)
        cfg.train_cfg.assigner.type = 'RetinaIoUAssigner'
    return cfg


def tiny_demo_config() -> Config:
    """The demo's shared base (``configs/demo/_base_/retinanet_shapes_common.py``) with our four
    modules at 16 channels: the demo's pipeline and runtime at test size.

    Only available in a source checkout (the configs are not part of the installed package).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = Config.fromfile(os.path.join(root, 'configs', 'demo', '_base_',
                                       'retinanet_shapes_common.py'))
    cfg.model.backbone.base_channels = 8
    cfg.model.neck = dict(type='RetinaFPN', in_channels=[16, 32, 64], out_channels=16,
                          start_level=0, num_outs=4, strides=(8, 16, 32, 64))
    cfg.model.bbox_head.update(type='RetinaNetHead', in_channels=16, feat_channels=16,
                               stacked_convs=1,
                               loss_cls=dict(type='RetinaFocalLoss', use_sigmoid=True))
    cfg.model.train_cfg.assigner.type = 'RetinaIoUAssigner'
    return cfg
