"""RetinaDataPreprocessor: mmdet's DetDataPreprocessor, with channels-last test batches."""
import math
from pathlib import Path

import pytest
import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config

from mmdet_retina_plugin.models.data_preprocessors import RetinaDataPreprocessor

R50_CONFIG = (Path(__file__).resolve().parents[3] / 'configs' / 'retinanet'
              / 'retina-plugin_r50_fpn_1x_coco.py')
SETTINGS = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                pad_size_divisor=32)
CL = torch.channels_last


def batch():
    gen = torch.Generator().manual_seed(0)
    sizes = [(70, 100), (96, 64)]  # padded to 96 x 128 together
    return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
                        for h, w in sizes],
                data_samples=[DetDataSample(metainfo=dict(img_shape=s, ori_shape=s,
                                                          scale_factor=(1.0, 1.0)))
                              for s in sizes])


@pytest.mark.parametrize('training', [False, True])
def test_same_values_as_mmdet_layout_by_mode(training):
    ours = MODELS.build(dict(type='RetinaDataPreprocessor', **SETTINGS))
    stock = DetDataPreprocessor(**SETTINGS)
    a, b = ours(batch(), training=training), stock(batch(), training=training)
    assert torch.equal(a['inputs'], b['inputs']) and a['inputs'].shape == (2, 3, 96, 128)
    # test batches channels-last, training batches as mmdet's (bit-identical training)
    assert a['inputs'].is_contiguous(memory_format=CL) is not training
    assert a['inputs'].is_contiguous() is training
    assert [s.batch_input_shape for s in a['data_samples']] == \
        [s.batch_input_shape for s in b['data_samples']]


def test_flags():
    nchw = RetinaDataPreprocessor(test_channels_last=False, **SETTINGS)
    assert nchw(batch())['inputs'].is_contiguous()
    nhwc = RetinaDataPreprocessor(train_channels_last=True, **SETTINGS)
    assert nhwc(batch(), training=True)['inputs'].is_contiguous(memory_format=CL)
    for name in ('test_channels_last', 'train_channels_last'):
        with pytest.raises(ValueError, match=name):
            RetinaDataPreprocessor(**{name: 1})


def test_r50_detections_equal_with_either_layout():
    cfg = Config.fromfile(str(R50_CONFIG))
    assert cfg.model.data_preprocessor.type == 'RetinaDataPreprocessor'
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    model.init_weights()
    with torch.no_grad():  # scores spread over (0, 1): detections to compare
        model.bbox_head.retina_cls.weight.mul_(1000.0)
        model.bbox_head.retina_cls.bias.fill_(math.log(0.1 / 0.9))
        nhwc = model.test_step(batch())
        model.data_preprocessor.test_channels_last = False
        nchw = model.test_step(batch())
    for a, b in zip(nhwc, nchw):
        a, b = a.pred_instances, b.pred_instances
        assert len(b.scores) == 100  # max_per_img: a full set to compare
        torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-4)
        # NHWC and NCHW kernels round differently: compare boxes of the same-ranked detections
        # where the scores are not near-tied
        assert torch.equal(a.labels[:20], b.labels[:20])
        torch.testing.assert_close(a.bboxes[:20], b.bboxes[:20], rtol=1e-3, atol=1e-3)


def test_non_blocking_copies_reach_the_same_batch():
    """``non_blocking=True`` (the bf16 config's) changes nothing on CPU; on a GPU, a pinned
    batch copied asynchronously gives the values of a blocking copy."""
    blocking = RetinaDataPreprocessor(train_channels_last=True, **SETTINGS)
    async_ = RetinaDataPreprocessor(train_channels_last=True, non_blocking=True, **SETTINGS)
    assert async_._non_blocking is True and blocking._non_blocking is False
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    blocking.to(device)
    async_.to(device)
    expected = blocking(batch(), training=True)['inputs']
    data = batch()
    if device == 'cuda':
        data['inputs'] = [t.pin_memory() for t in data['inputs']]
    got = async_(data, training=True)['inputs']
    assert got.device == expected.device and got.is_contiguous(memory_format=CL)
    assert torch.equal(got, expected)
