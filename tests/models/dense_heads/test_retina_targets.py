"""Helpers of the batched training targets against the mmdet code they stand in for."""
import pytest
import torch
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder, TBLRBBoxCoder

from mmdet_retina_plugin.models.dense_heads.retina_loss_reduction import level_sums
from mmdet_retina_plugin.models.dense_heads.retina_targets import encode_boxes


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


def test_level_sums_sum_each_level_over_images_and_entries():
    values = torch.arange(2 * 6 * 3, dtype=torch.float64).reshape(2, 6, 3)
    expected = [values[:, :1].sum(), values[:, 1:4].sum(), values[:, 4:].sum()]
    assert level_sums(values, [1, 3, 2]).tolist() == [float(e) for e in expected]
