# The same detector, data and schedule as retinanet_shapes.py, with mmdet's stock FPN,
# RetinaHead, FocalLoss and MaxIoUAssigner: the reference the demo's --compare runs against.
_base_ = ['./_base_/retinanet_shapes_common.py']
