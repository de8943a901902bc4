# COCO multi-scale training (short side uniformly in [640, 800], long side <= 1333, flip 0.5),
# 3x schedule (12 epochs over a 3x RepeatDataset), SGD lr 0.01 for 16 images per batch.
_base_ = 'mmdet::common/ms_3x_coco.py'

optim_wrapper = dict(optimizer=dict(lr=0.01))
