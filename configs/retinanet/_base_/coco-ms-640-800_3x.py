# COCO multi-scale training (short side uniformly in [640, 800], long side <= 1333, flip 0.5),
# 3x schedule (12 epochs over a 3x RepeatDataset), SGD lr 0.01 for 16 images per batch.
_base_ = 'mmdet::common/ms_3x_coco.py'

# The plugin's reliability pieces: checkpoints written atomically (a kill mid-save never leaves a
# truncated file for --resume), and a guard that skips steps with a non-finite loss or gradient,
# naming the batch's images, and refuses to write non-finite checkpoints.
default_hooks = dict(checkpoint=dict(type='RetinaAtomicCheckpointHook'))
custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip')]

# mmdet's pipeline with RetinaSanitizeGt after LoadAnnotations (see coco-ss_1x.py).
train_pipeline = [*_base_.train_pipeline[:2], dict(type='RetinaSanitizeGt', min_size=1.0),
                  *_base_.train_pipeline[2:]]
train_dataloader = dict(
    dataset=dict(dataset=dict(type='RetinaCocoDataset', pipeline=train_pipeline)))

optim_wrapper = dict(optimizer=dict(lr=0.01))
