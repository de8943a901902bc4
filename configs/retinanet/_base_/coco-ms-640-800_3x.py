# COCO multi-scale training (short side uniformly in [640, 800], long side <= 1333, flip 0.5),
# 3x schedule (12 epochs over a 3x RepeatDataset), SGD lr 0.01 for 16 images per batch.
_base_ = 'mmdet::common/ms_3x_coco.py'

# The plugin's reliability pieces: checkpoints written atomically (a kill mid-save never leaves a
# truncated file for --resume), and a guard that skips steps with a non-finite loss or gradient,
# naming the batch's images, and refuses to write non-finite checkpoints.
default_hooks = dict(checkpoint=dict(type='RetinaAtomicCheckpointHook'))
custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip')]

# mmdet's pipeline with RetinaSanitizeGt after LoadAnnotations (see coco-ss_1x.py).
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RetinaSanitizeGt', min_size=1.0),
    dict(type='RandomResize', scale=[(1333, 640), (1333, 800)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    dataset=dict(dataset=dict(type='RetinaCocoDataset', pipeline=train_pipeline)))

optim_wrapper = dict(optimizer=dict(lr=0.01))
