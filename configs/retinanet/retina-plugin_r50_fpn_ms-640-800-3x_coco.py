_base_ = ['./_base_/retina-plugin_r50_fpn.py', './_base_/coco-ms-640-800_3x.py']
