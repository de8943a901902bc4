# The paper's (Detectron's) RetinaNet where it differs from mmdet's defaults: a ReLU on P6 before
# the P7 conv, and Smooth L1 box loss with beta=0.11.
_base_ = './retina-plugin_r50_fpn.py'

model = dict(
    neck=dict(relu_before_p7=True),
    bbox_head=dict(loss_bbox=dict(type='SmoothL1Loss', beta=0.11, loss_weight=1.0)))
