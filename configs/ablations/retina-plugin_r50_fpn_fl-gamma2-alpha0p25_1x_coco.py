# Focal-loss paper, Table 1b: gamma=2.0 with its best alpha=0.25 (R50, 1x, prior 0.01): the paper's
# choice and the baseline's values, spelled out so the grid is complete.
_base_ = '../retinanet/retina-plugin_r50_fpn_1x_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(gamma=2.0, alpha=0.25)))
