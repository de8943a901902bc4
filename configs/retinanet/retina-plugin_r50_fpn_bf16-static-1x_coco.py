# The bf16 config (channels-last, frozen BN as an affine, pinned batches, bf16 autocast) with static
# shapes and a compiled head:
# - every batch, training and test, is padded to one of two sizes: 800x1344 for landscape batches,
#   1344x800 for portrait ones (mmdet's AspectRatioBatchSampler keeps a batch's orientation; the
#   1333x800 keep-ratio resize, padded to 32, fits in them). Anchors over the extra padding stay
#   invalid, as over mmdet's own batch padding;
# - gts are padded to 100 per image (an image with more pads its batch to its count, warned once);
# - the head's dense work (forward + targets + losses in training, forward + candidate selection in
#   inference) and, through RetinaCompileHook, the backbone and the neck run compiled by
#   torch.compile and replayed as CUDA graphs (mode='reduce-overhead'): a few graphs per shape
#   instead of several hundred small kernels, whose launches bind the host at small batches. A
#   shape outside the buckets (e.g. the TTA's 2000x1200 scale) compiles once more; a part whose
#   compile fails runs eager with a warning.
# Same weights and checkpoints as the baseline, so mmdet's R50 RetinaNet checkpoints load strictly.
_base_ = './retina-plugin_r50_fpn_bf16-1x_coco.py'

model = dict(
    data_preprocessor=dict(shape_buckets=[(800, 1344), (1344, 800)]),
    bbox_head=dict(static_num_gts=100, compile_cfg=dict(mode='reduce-overhead')))

# the base's hooks restated (custom_hooks lists are replaced, not merged), then the compile hook
custom_hooks = [dict(type='RetinaNonFiniteGuardHook', action='skip'),
                dict(type='RetinaChannelsLastHook'),
                dict(type='RetinaFoldFrozenBNHook'),
                dict(type='RetinaCompileHook', modules=['backbone', 'neck'],
                     compile_cfg=dict(mode='reduce-overhead'))]
