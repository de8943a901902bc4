# mmdet's ATSS with the plugin's RetinaFocalLoss as classification loss.
_base_ = 'mmdet::atss/atss_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

model = dict(bbox_head=dict(loss_cls=dict(type='RetinaFocalLoss')))
