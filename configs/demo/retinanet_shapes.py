# RetinaNet built from the plugin's own modules on the synthetic shapes data set.
# Everything but the four modules comes from the shared base, so this config and
# retinanet_shapes_stock.py (mmdet's modules) differ only in which implementation runs.
_base_ = ['./_base_/retinanet_shapes_common.py']

model = dict(
    # The same pyramid as the base's FPN(add_extra_convs='on_input', num_outs=4), in
    # RetinaFPN's terms; its strides must match the anchor generator's.
    neck=dict(
        _delete_=True,
        type='RetinaFPN',
        in_channels=[32, 64, 128],
        out_channels=64,
        start_level=0,
        num_outs=4,
        p6_source='input',
        strides=(8, 16, 32, 64)),
    bbox_head=dict(type='RetinaNetHead', loss_cls=dict(type='RetinaFocalLoss')),
    train_cfg=dict(assigner=dict(type='RetinaIoUAssigner')))
