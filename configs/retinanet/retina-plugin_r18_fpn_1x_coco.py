_base_ = './retina-plugin_r50_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        depth=18,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18')),
    # ResNet-18 C2-C5 channels (basic blocks, no x4 expansion)
    neck=dict(in_channels=[64, 128, 256, 512]))
