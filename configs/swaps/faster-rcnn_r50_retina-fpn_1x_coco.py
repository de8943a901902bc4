# mmdet's Faster R-CNN with the plugin's RetinaFPN as neck. Faster R-CNN needs P2-P6 (strides
# 4..64), not RetinaNet's P3-P7: start_level=0 keeps C2, and the one extra level (P6) is a
# stride-2 conv on P5 (p6_source='output'; mmdet's FPN subsamples P5 instead). The RPN anchor
# strides (4..64) and the RoI extractor's featmap_strides (4..32, P2-P5) of the base match these.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_retina_plugin'], allow_failed_imports=False)

# The base's FPN keeps its in_channels, out_channels=256 and num_outs=5.
model = dict(
    neck=dict(type='RetinaFPN', start_level=0, p6_source='output', strides=[4, 8, 16, 32, 64]))
