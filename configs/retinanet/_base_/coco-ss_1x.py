# COCO single-scale training (short side 800, long side <= 1333, horizontal flip 0.5), 12 epochs,
# SGD lr 0.01 for 16 images per batch (mmdet's RetinaNet setting), plus mmdet's RetinaNet TTA.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    'mmdet::retinanet/retinanet_tta.py',
]

# The plugin's reliability pieces: checkpoints written atomically (a kill mid-save never leaves a
# truncated file for --resume), and a guard that skips steps with a non-finite loss or gradient,
# naming the batch's images, and refuses to write non-finite checkpoints.
default_hooks = dict(checkpoint=dict(type='RetinaAtomicCheckpointHook'))
custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip')]

# mmdet's training pipeline (its coco_detection.py's) with RetinaSanitizeGt after
# LoadAnnotations: degenerate boxes are dropped with a warning naming the image, NaN/Inf boxes
# or pixels raise naming it.
train_pipeline = [*_base_.train_pipeline[:2], dict(type='RetinaSanitizeGt', min_size=1.0),
                  *_base_.train_pipeline[2:]]
train_dataloader = dict(dataset=dict(type='RetinaCocoDataset', pipeline=train_pipeline))

optim_wrapper = dict(optimizer=dict(lr=0.01))
