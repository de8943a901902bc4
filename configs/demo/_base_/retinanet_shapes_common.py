# RetinaNet on the synthetic shapes data set (mmdet_retina_plugin.datasets.synthetic_shapes), sized
# to train from scratch on 2 CPU cores in a few minutes. This base uses mmdet's stock modules; the
# demo config swaps in the plugin's four modules and changes nothing else.
_base_ = ['mmdet::_base_/default_runtime.py']

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

# The demo (python -m mmdet_retina_plugin.tools.demo) writes this data set: 1000 train / 500 val
# images of 160 x 160 px, shapes 10..112 px (see FULL_DATA there). 500 val images (1601 boxes):
# on 100 the mAP of one checkpoint moved by up to 0.04 with the choice of images.
data_root = 'data/shapes/'
classes = ('circle', 'square', 'triangle', 'cross', 'ring')
num_classes = len(classes)

model = dict(
    type='RetinaNet',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    # ResNet-18 at a quarter of the usual width, trained from scratch (nothing is downloaded).
    backbone=dict(
        type='ResNet',
        depth=18,
        base_channels=16,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),
    # Strides 8..64: shapes are 10..112 px on 160 px images, so P7 (stride 128) would only see
    # padding-sized anchors.
    neck=dict(
        type='FPN',
        in_channels=[32, 64, 128],
        out_channels=64,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=4),
    bbox_head=dict(
        type='RetinaHead',
        num_classes=num_classes,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        # GroupNorm in the head: the from-scratch head trains much faster with a norm layer.
        norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        # Base sizes 16..128 (x 2^(0, 1/3, 2/3)): the smallest shapes need 16 px anchors at
        # stride 8.
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=2,
            scales_per_octave=3,
            ratios=[0.5, 1.0, 2.0],
            strides=[8, 16, 32, 64]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    train_cfg=dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=0.5,
            neg_iou_thr=0.4,
            min_pos_iou=0,
            ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.5),
        max_per_img=100))

# Images are generated at the training size, so no resizing; Resize(scale_factor=1.0) only records
# the scale factor that RetinaNet.predict(rescale=True) reads.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    # Every class is symmetric under these flips, so they are free extra data.
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25],
         direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale_factor=1.0, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# What the two splits share (mmengine leaves names that start with '__' out of the config).
__split = dict(type='CocoDataset', data_root=data_root, metainfo=dict(classes=classes))
__loader = dict(num_workers=1, persistent_workers=True)
# Batch 4: on 2 CPU cores more, smaller steps beat fewer, larger ones within a fixed time.
train_dataloader = dict(
    __loader,
    batch_size=4,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        __split,
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        # Images without shapes stay in: they teach the head that textures are background.
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline))
val_dataloader = dict(
    __loader,
    batch_size=8,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(__split, ann_file='annotations/val.json', data_prefix=dict(img='val/'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/val.json', metric='bbox')
test_evaluator = val_evaluator

# 20 epochs x 250 iterations of batch 4 (5000 iterations; times: README, "The demo")
# (mAP still rose by ~0.05 from epoch 14 to 20 in the tuning runs).
max_epochs = 20
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# AdamW converges from scratch much faster than SGD in a few hundred iterations; clipping guards
# the first iterations, when the randomly initialised head's focal loss is largest.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]

# BN statistics averaged over 200 training batches once training ends (detectron2's PreciseBN):
# at batch 4, BN's own running average over the last ~10 batches is a noisy estimate, and the
# evaluation uses it. Over the demo's 24 runs (3 detectors x 8 seeds) it moved mAP by -0.001 to
# +0.005 (mean +0.0015). Training itself is unchanged (same weights); its time: README, "The demo".
custom_hooks = [dict(type='RetinaPreciseBNHook', num_iters=200, interval=max_epochs)]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=True)
randomness = dict(seed=0, deterministic=True)
auto_scale_lr = dict(enable=False, base_batch_size=4)
