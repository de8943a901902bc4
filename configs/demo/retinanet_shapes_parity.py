# The plugin's modules with mmdet's exact settings: retinanet_shapes.py without the option that
# mmdet lacks, so it computes what retinanet_shapes_stock.py computes (up to the order of float
# sums) and starts from the same weights under one seed.
_base_ = ['./retinanet_shapes.py']

model = dict(bbox_head=dict(avg_factor_momentum=None))
