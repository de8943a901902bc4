"""The batched box coding against mmdet's DeltaXYWHBBoxCoder (and other coders), bit for bit."""
import pytest
import torch
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder, TBLRBBoxCoder

from mmdet_retina_plugin.models.dense_heads.retina_box_coding import (
    decode_boxes,
    delta_xywh_decode,
    encode_boxes,
)


def boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 50 + 1], 1)


@pytest.mark.parametrize('coder', [
    DeltaXYWHBBoxCoder(),
    DeltaXYWHBBoxCoder(target_means=(0.1, 0.0, -0.2, 0.05), target_stds=(0.1, 0.1, 0.2, 0.2)),
    TBLRBBoxCoder(normalizer=4.0),
])
def test_encode_boxes_equals_the_coder_bitwise(coder):
    anchors, gts = boxes(500, 0), boxes(500, 1)
    assert torch.equal(encode_boxes(coder, anchors, gts), coder.encode(anchors, gts))


@pytest.mark.parametrize('coder_cfg', [
    dict(),
    dict(target_means=(0.1, 0.0, -0.1, 0.2), target_stds=(0.1, 0.1, 0.2, 0.2)),
    dict(add_ctr_clamp=True, ctr_clamp=16),
])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.float64])
def test_delta_xywh_decode_equals_mmdet_bitwise(coder_cfg, dtype):
    coder = DeltaXYWHBBoxCoder(**coder_cfg)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 300, 2, generator=g) * 500
    anchors = torch.cat([xy, xy + torch.rand(2, 300, 2, generator=g) * 200 + 1], -1).to(dtype)
    # large deltas reach both the wh ratio clip and the centre clamp
    deltas = (torch.randn(2, 300, 4, generator=g) * 3).to(dtype)
    expected = coder.decode(anchors.flatten(0, 1), deltas.flatten(0, 1))
    got = decode_boxes(coder, anchors, deltas)
    assert got.shape == (2, 300, 4) and got.dtype == dtype
    assert torch.equal(got.flatten(0, 1), getattr(expected, 'tensor', expected))
    assert torch.equal(delta_xywh_decode(coder, anchors[0, :0], deltas[0, :0]),
                       deltas[0, :0])
