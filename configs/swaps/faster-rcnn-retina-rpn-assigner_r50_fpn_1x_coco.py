# mmdet's Faster R-CNN with the plugin's RetinaIoUAssigner assigning RPN anchors; it takes
# MaxIoUAssigner's arguments (pos 0.7, neg 0.3, low-quality matches >= 0.3 kept from the base).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

model = dict(train_cfg=dict(rpn=dict(assigner=dict(type='RetinaIoUAssigner'))))
