# The paper's headline training recipe: ResNet-101, scale jitter 640-800, longer schedule.
_base_ = ['./_base_/retina-plugin-paper_r50_fpn.py', './_base_/coco-ms-640-800_3x.py']

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
