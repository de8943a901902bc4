_base_ = ['./_base_/retina-plugin_r50_fpn.py', './_base_/coco-ss_1x.py']
