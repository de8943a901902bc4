# COCO single-scale training (short side 800, long side <= 1333, horizontal flip 0.5), 12 epochs,
# SGD lr 0.01 for 16 images per batch (mmdet's RetinaNet setting), plus mmdet's RetinaNet TTA.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
    'mmdet::retinanet/retinanet_tta.py',
]

optim_wrapper = dict(optimizer=dict(lr=0.01))
