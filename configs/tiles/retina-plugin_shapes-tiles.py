# The demo's RetinaNet (configs/demo/retinanet_shapes.py) trained on windows of large images and
# evaluated on the whole original images by sliced inference. Data: large images of many small
# shapes (python -m mmdet_retina_plugin.tools.demo_tiles writes them, see LARGE_DATA there):
# 1500 x 2000 px, shapes of 10..40 px, some of them across window borders.
_base_ = ['../demo/retinanet_shapes.py']

data_root = 'data/shapes_large/'
classes = ('circle', 'square', 'triangle', 'cross', 'ring')
# 256 px windows: the demo network trains on 160 px images; a window holds a few dozen shapes.
# The same windows in training and evaluation (mmdet_retina_plugin.utils.tiling.tile_windows).
tile = 256
overlap = 0.2

model = dict(
    # RetinaNet's parameters (checkpoints load both ways); its test step runs tile by tile.
    type='RetinaSlicedDetector',
    slice_cfg=dict(tile=tile, overlap=overlap, batch_size=8, merge='nms'),
    # Partly visible boxes are ignored regions (partial='ignore' below): anchors covering more
    # than half of one are neither positive nor negative, instead of background.
    train_cfg=dict(assigner=dict(ignore_iof_thr=0.5)),
    # Per window (a 256 px window holds a few dozen shapes at most); the merged detections of a
    # whole image are not capped (slice_cfg.max_per_img=None), and CocoMetric counts up to 1000.
    test_cfg=dict(max_per_img=300))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    # Cuts the sample's window out of the decoded image; the boxes are in window pixels already.
    dict(type='RetinaCropTile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=[0.25, 0.25, 0.25],
         direction=['horizontal', 'vertical', 'diagonal']),
    dict(type='PackDetInputs')
]
train_dataloader = dict(
    batch_size=4,
    dataset=dict(
        _delete_=True,
        type='RetinaTiledDataset',
        dataset=dict(
            type='RetinaCocoDataset',
            data_root=data_root,
            metainfo=dict(classes=classes),
            ann_file='annotations/train.json',
            data_prefix=dict(img='train/'),
            # Images without shapes give empty windows, sampled down by empty_fraction.
            filter_cfg=dict(filter_empty_gt=False)),
        tile=tile,
        overlap=overlap,
        min_visible=0.5,
        partial='ignore',
        empty_fraction=0.1,
        seed=0,
        pipeline=train_pipeline))
# The demo's test pipeline keeps whole images at scale 1: RetinaSlicedDetector cuts the tiles.
val_dataloader = dict(batch_size=1, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# 12 epochs over the windows of 6 images (480 windows, 120 iterations of 4): 1440 iterations.
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
custom_hooks = [dict(type='RetinaPreciseBNHook', num_iters=100, interval=max_epochs)]
default_hooks = dict(checkpoint=dict(interval=max_epochs))
