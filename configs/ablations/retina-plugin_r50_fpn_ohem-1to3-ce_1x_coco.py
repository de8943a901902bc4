# Focal-loss paper, Table 1d: sigmoid cross-entropy with OHEM-style mining (all positives, hardest
# negatives at neg:pos = 3:1) in place of the focal loss; normalised by the number of positives.
_base_ = '../retinanet/retina-plugin_r50_fpn_1x_coco.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(
            _delete_=True,
            type='RetinaHardNegativeCELoss',
            use_sigmoid=True,
            neg_pos_ratio=3.0,
            loss_weight=1.0)))
