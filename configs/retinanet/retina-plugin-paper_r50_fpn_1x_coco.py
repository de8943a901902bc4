_base_ = ['./_base_/retina-plugin-paper_r50_fpn.py', './_base_/coco-ss_1x.py']
