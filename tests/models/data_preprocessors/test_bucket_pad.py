"""RetinaBucketPad: each batch padded to the smallest listed size that holds it, as a batch augment
and through RetinaDataPreprocessor(shape_buckets=...) for training and test batches alike."""
import warnings

import numpy as np
import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData, PixelData

from mmdet_retina_plugin.models.data_preprocessors import RetinaBucketPad

SETTINGS = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                pad_size_divisor=32)
BUCKETS = [(128, 160), (160, 128), (96, 96)]


def samples(shapes):
    return [DetDataSample(metainfo=dict(img_shape=s, ori_shape=s, pad_shape=s,
                                        batch_input_shape=max(shapes)))
            for s in shapes]


def batch(sizes):
    gen = torch.Generator().manual_seed(0)
    return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
                        for h, w in sizes],
                data_samples=[DetDataSample(metainfo=dict(img_shape=s, ori_shape=s,
                                                          scale_factor=(1.0, 1.0)))
                              for s in sizes])


@pytest.mark.parametrize('shape, bucket', [
    ((64, 96), (96, 96)),      # the smallest area that holds it
    ((96, 96), (96, 96)),      # exactly a bucket: nothing to pad
    ((128, 96), (128, 160)),   # landscape bucket: least area among those that hold it
    ((96, 128), (128, 160)),
    ((160, 96), (160, 128)),   # portrait
])
def test_smallest_bucket_holding_the_batch(shape, bucket):
    pad = RetinaBucketPad(BUCKETS, img_pad_value=7)
    inputs = torch.rand(2, 3, *shape)
    out, data = pad(inputs, samples([shape, (32, 32)]))
    assert out.shape == (2, 3, *bucket)
    assert torch.equal(out[..., :shape[0], :shape[1]], inputs)
    assert (out[..., shape[0]:, :] == 7).all() and (out[..., shape[1]:] == 7).all()
    assert [s.batch_input_shape for s in data] == [bucket] * 2
    # each image's own padding is unchanged: anchors over the batch's padding stay invalid
    assert [s.pad_shape for s in data] == [shape, (32, 32)]
    if shape == bucket:
        assert out is inputs


def test_batch_larger_than_every_bucket_keeps_its_shape_warned_once():
    pad = RetinaBucketPad(BUCKETS)
    inputs = torch.rand(1, 3, 192, 64)
    with pytest.warns(UserWarning, match=r'192x64 batch is larger than every size'):
        out, _ = pad(inputs, samples([(192, 64)]))
    assert out is inputs
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert pad(torch.rand(1, 3, 200, 50), None)[0].shape == (1, 3, 200, 50)


def test_masks_and_segmentation_maps_padded_as_mmdets_fixed_size_pad():
    pad = RetinaBucketPad([(64, 80)], pad_mask=True, mask_pad_value=3, pad_seg=True,
                          seg_pad_value=255)
    sample = samples([(40, 50)])[0]
    sample.gt_instances = InstanceData(masks=BitmapMasks(np.ones((2, 40, 50), np.uint8), 40, 50))
    sample.gt_sem_seg = PixelData(sem_seg=torch.zeros(1, 40, 50, dtype=torch.uint8))
    _, (out,) = pad(torch.rand(1, 3, 40, 50), [sample])
    masks, seg = out.gt_instances.masks, out.gt_sem_seg.sem_seg
    assert masks.masks.shape == (2, 64, 80) and (masks.masks[:, 40:] == 3).all()
    assert seg.shape == (1, 64, 80) and (seg[:, :, 50:] == 255).all() and not seg[:, :40, :50].any()


@pytest.mark.parametrize('sizes', [[], [(64,)], [(64, 0)], [(64, 80.5)], 'abc', None,
                                   [(True, 64)]])
def test_bad_sizes_raise_naming_the_field(sizes):
    with pytest.raises(ValueError, match=r'sizes must be a non-empty list of \(h, w\) pairs'):
        RetinaBucketPad(sizes)


@pytest.mark.parametrize('training', [False, True])
def test_preprocessor_pads_training_and_test_batches(training):
    ours = MODELS.build(dict(type='RetinaDataPreprocessor', shape_buckets=BUCKETS, pad_value=5,
                             **SETTINGS))
    stock = DetDataPreprocessor(pad_value=5, **SETTINGS)
    a, b = ours(batch([(70, 100), (96, 64)]), training), stock(batch([(70, 100), (96, 64)]),
                                                               training)
    assert b['inputs'].shape == (2, 3, 96, 128) and a['inputs'].shape == (2, 3, 128, 160)
    assert torch.equal(a['inputs'][..., :96, :128], b['inputs'])
    # the bucket's padding is the normalised pad value, as mmdet's own batch padding
    assert torch.equal(a['inputs'][:, :, 96:, :].unique(), b['inputs'][:, :, 95:, 127:].unique())
    assert a['inputs'].is_contiguous(memory_format=torch.channels_last) is not training
    assert [s.batch_input_shape for s in a['data_samples']] == [(128, 160)] * 2
    assert [s.pad_shape for s in a['data_samples']] == [s.pad_shape for s in b['data_samples']]


def test_registered_as_a_batch_augment():
    stock = DetDataPreprocessor(batch_augments=[dict(type='RetinaBucketPad', sizes=BUCKETS)],
                                **SETTINGS)
    # 60 x 90 padded to 64 x 96 by the divisor, then to the 96 x 96 bucket in training only
    assert stock(batch([(60, 90)]), training=True)['inputs'].shape == (1, 3, 96, 96)
    assert stock(batch([(60, 90)]), training=False)['inputs'].shape == (1, 3, 64, 96)
