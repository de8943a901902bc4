# RetinaNet R50-FPN model with the plugin's four modules in place of mmdet's, at mmdet parity
# settings (P6 from C5, no ReLU before P7, L1 box loss, focal gamma=2 alpha=0.25, prior 0.01).
# Model only: full configs add a data/schedule fragment (coco-ss_1x.py, coco-ms-640-800_3x.py).
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

model = dict(
    # mmdet's preprocessor (same settings) with channels-last test batches: faster on CPU
    data_preprocessor=dict(type='RetinaDataPreprocessor'),
    # _delete_: RetinaFPN spells mmdet's `add_extra_convs='on_input'` as p6_source='input'.
    neck=dict(
        _delete_=True,
        type='RetinaFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        num_outs=5,
        p6_source='input',
        relu_before_p7=False),
    bbox_head=dict(
        type='RetinaNetHead',
        prior_prob=0.01,
        loss_cls=dict(type='RetinaFocalLoss')),
    train_cfg=dict(assigner=dict(type='RetinaIoUAssigner')))
