# The baseline trained the GPU-native way in fp32: channels-last, the frozen backbone BN as a
# per-channel affine, batches copied from pinned memory without blocking. Same weights and
# checkpoints as the baseline (state-dict names unchanged), so mmdet's R50 RetinaNet checkpoints
# load into it strictly; the losses equal the baseline's to fp32 rounding. Runs on the CPU too,
# where pinning is skipped. The bf16 config adds bf16 autocast to it.
_base_ = './retina-plugin_r50_fpn_1x_coco.py'

model = dict(
    # NHWC training batches (test batches already are), moved to the GPU with non_blocking=True
    data_preprocessor=dict(train_channels_last=True, non_blocking=True),
    # norm_eval=True already freezes the backbone's BN statistics: compute them as the affine they
    # are, with no batch-norm kernels forward or backward (mmdet's weights load unchanged)
    backbone=dict(norm_cfg=dict(type='RetinaFrozenBN', requires_grad=False)))

# page-locked batches: the copy to the GPU runs asynchronously (non_blocking above)
train_dataloader = dict(pin_memory=True)
val_dataloader = dict(pin_memory=True)
test_dataloader = dict(pin_memory=True)

# NHWC weights from the first iteration on (after the checkpoint or pretrained weights are loaded);
# for testing, the frozen BN folded into the convolutions before it (53 fewer passes per image);
# the base's non-finite guard restated: custom_hooks lists are replaced, not merged
custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip'),
                dict(type='RetinaChannelsLastHook'),
                dict(type='RetinaFoldFrozenBNHook')]
