"""Helpers of the batched training losses against the mmdet code they stand in for."""
import torch

from mmdet_retina_plugin.models.dense_heads.retina_loss_reduction import level_sums


def test_level_sums_sum_each_level_over_images_and_entries():
    values = torch.arange(2 * 6 * 3, dtype=torch.float64).reshape(2, 6, 3)
    expected = [values[:, :1].sum(), values[:, 1:4].sum(), values[:, 4:].sum()]
    assert level_sums(values, [1, 3, 2]).tolist() == [float(e) for e in expected]
