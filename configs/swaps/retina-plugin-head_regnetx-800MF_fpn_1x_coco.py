# mmdet's RetinaNet on a RegNetX-800MF backbone with the plugin's RetinaNetHead in place of
# RetinaHead (same arguments plus prior_prob); backbone, neck and losses stay mmdet's.
_base_ = 'mmdet::regnet/retinanet_regnetx-800MF_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

model = dict(bbox_head=dict(type='RetinaNetHead', prior_prob=0.01))
