# RetinaNet built from the plugin's own modules on the synthetic shapes data set.
# Everything but the four modules comes from the shared base, so this config and
# retinanet_shapes_stock.py (mmdet's modules) differ only in which implementation runs, plus
# one option of ours that stock lacks (avg_factor_momentum); retinanet_shapes_parity.py drops it.
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
    # avg_factor_momentum: divide the losses by a moving average of the positive count
    # (detectron2's normaliser) rather than each batch's own; with 4 small images a batch holds
    # a few dozen positives or none, and mmdet's RetinaHead has no such option.
    bbox_head=dict(type='RetinaNetHead', loss_cls=dict(type='RetinaFocalLoss'),
                   avg_factor_momentum=0.9),
    train_cfg=dict(assigner=dict(type='RetinaIoUAssigner')))
