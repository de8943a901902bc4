# Mixed precision (fp16 autocast with dynamic loss scaling); needs a CUDA/NPU/MLU device.
_base_ = './retina-plugin_r50_fpn_1x_coco.py'

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
