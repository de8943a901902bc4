# Focal-loss paper, Section 3.3 / 4.1: no prior on the classification bias. pi=0.5 gives bias
# -log((1 - pi) / pi) = 0, i.e. every anchor starts at foreground probability 0.5 instead of 0.01.
_base_ = '../retinanet/retina-plugin_r50_fpn_1x_coco.py'

model = dict(bbox_head=dict(prior_prob=0.5))
