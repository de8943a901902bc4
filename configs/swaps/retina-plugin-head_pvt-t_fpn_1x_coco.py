# mmdet's RetinaNet on a PVT-Tiny (transformer) backbone with the plugin's RetinaNetHead in place
# of RetinaHead; backbone, neck and losses stay mmdet's.
_base_ = 'mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

model = dict(bbox_head=dict(type='RetinaNetHead', prior_prob=0.01))
