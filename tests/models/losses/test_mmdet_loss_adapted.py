"""mmdet 3.3's ``tests/test_models/test_losses/test_loss.py`` adapted to our type name, for the
tests that cover ``FocalLoss``: ``RetinaFocalLoss`` for ``FocalLoss`` in
``test_loss_with_reduction_override`` and ``test_FocalLoss_loss``.

An invalid ``reduction_override`` expects ``AssertionError`` and ``avg_factor`` with ``'sum'``
expects ``ValueError``, as in mmdet (``RetinaConfigError`` is both). mmdet's
``test_loss_with_reduction_override`` passes a tuple as the target: the override is checked
before the inputs, as mmdet does. mmdet's ``test_FocalLoss_loss`` only checks that a tensor
comes back; here the loss is also compared with mmdet's ``FocalLoss`` on the same inputs.
"""
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.losses import FocalLoss
from torch import Tensor

from mmdet_retina_plugin.models.losses import RetinaFocalLoss
from mmdet_retina_plugin.utils.errors import RetinaConfigError


def test_loss_with_reduction_override() -> None:
    pred = torch.rand((10, 4))
    target = torch.rand((10, 4)),  # a tuple, as in mmdet's test
    weight = None
    with pytest.raises(AssertionError) as info:
        # only reduction_override from [None, 'none', 'mean', 'sum'] is allowed
        RetinaFocalLoss()(pred, target, weight, reduction_override=True)
    assert isinstance(info.value, RetinaConfigError)
    assert 'reduction_override' in str(info.value)


def focal_inputs(input_shape: Tuple[int, ...]) -> Tuple[Tensor, Tensor]:
    """mmdet's inputs: random ``pred`` of ``input_shape``; class indices ``(N,)`` for
    ``(N, K)``, else a one-hot int64 target ``(B, K, H, W)`` for ``(B, K, H, W)`` ``pred``."""
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(input_shape, generator=gen)
    if len(input_shape) == 2:
        return pred, torch.randint(0, 5, (input_shape[0], ), generator=gen)
    b, n, w, h = input_shape
    labels = torch.randint(0, 5, (b * w * h, ), generator=gen)
    return pred, F.one_hot(labels, 5).reshape(b, w, h, n).permute(0, 3, 1, 2)


@pytest.mark.parametrize('input_shape', [(10, 5), (3, 5, 40, 40)])
def test_focal_loss_loss(input_shape: Tuple[int, ...]) -> None:
    pred, target = focal_inputs(input_shape)
    ours, stock = RetinaFocalLoss(), FocalLoss()

    def both(avg_factor: Optional[float] = None,
             reduction_override: Optional[str] = None) -> None:
        call = dict(avg_factor=avg_factor, reduction_override=reduction_override)
        loss = ours(pred, target, **call)
        assert isinstance(loss, torch.Tensor)
        torch.testing.assert_close(loss, stock(pred, target, **call), rtol=1e-5, atol=1e-7)

    both()
    both(reduction_override='mean')
    both(avg_factor=10)
    with pytest.raises(ValueError):
        # avg_factor only goes with reduction None, 'none' or 'mean'
        ours(pred, target, avg_factor=10, reduction_override='sum')
    for reduction_override in [None, 'none', 'mean']:
        both(avg_factor=10, reduction_override=reduction_override)
