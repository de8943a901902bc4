# Focal-loss paper, Table 1b: gamma=0.0 with its best alpha=0.75 (R50, 1x, prior 0.01).
_base_ = '../retinanet/retina-plugin_r50_fpn_1x_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(gamma=0.0, alpha=0.75)))
