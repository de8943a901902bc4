# The GPU-native baseline (retina-plugin_r50_fpn_gpu-1x_coco.py: channels-last, frozen BN as an
# affine, pinned batches) trained in bf16 autocast. Needs a GPU with bf16 (Ampere or later). Stock
# mmdet RetinaNet cannot train in bf16: mmcv's sigmoid_focal_loss op has no bf16 kernel;
# RetinaFocalLoss has. Same weights and checkpoints as the baseline (state-dict names unchanged),
# so mmdet's R50 RetinaNet checkpoints load into it strictly.
_base_ = './retina-plugin_r50_fpn_gpu-1x_coco.py'

# bf16 has fp32's exponent range: no loss scaling needed. A static scale of 1 keeps GradScaler's
# check that skips a step with a non-finite gradient.
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale=1.0)
