# mmdet's FCOS with the plugin's RetinaFocalLoss as classification loss (same arguments as
# mmdet's FocalLoss, so only the type changes).
_base_ = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

model = dict(bbox_head=dict(loss_cls=dict(type='RetinaFocalLoss')))
