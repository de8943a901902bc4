"""mmdet 3.3's ``tests/test_models/test_necks/test_necks.py::test_fpn`` adapted to our type name:
``RetinaFPN`` for ``FPN`` (the class, and ``type='RetinaFPN'`` through mmdet's registry).

The invalid arguments expect ``AssertionError`` as in mmdet (``RetinaConfigError`` is one). The
cases that build a model are parametrised instead of repeated. mmdet's shape checks are bare
comparisons (``outs[i].shape[1] == out_channels``, nothing asserted, and with sizes that ignore
``start_level=1``); here they are asserted, with the sizes ``start_level=1`` gives: the outputs
start at the second input map (64 / 2 = 32 pixels) and halve from level to level.
"""
from typing import Dict, List

import pytest
import torch
from mmdet.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import mmdet_retina_plugin  # noqa: F401  (registers RetinaFPN)
from mmdet_retina_plugin.models.necks import RetinaFPN
from mmdet_retina_plugin.utils.errors import RetinaConfigError

S = 64
IN_CHANNELS = [8, 16, 32, 64]
FEAT_SIZES = [S // 2**i for i in range(4)]  # [64, 32, 16, 8]
OUT_CHANNELS = 8

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def feats() -> List[torch.Tensor]:
    """One image's C2-C5 maps: ``(1, IN_CHANNELS[i], FEAT_SIZES[i], FEAT_SIZES[i])``."""
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(1, c, s, s, generator=gen) for c, s in zip(IN_CHANNELS, FEAT_SIZES)]


def test_end_level_minus_one_is_the_last_level() -> None:
    """``end_level=-1`` and ``end_level=3`` build the same pyramid."""
    a = RetinaFPN(in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, start_level=0,
                  end_level=-1, num_outs=5)
    b = RetinaFPN(in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, start_level=0,
                  end_level=3, num_outs=5)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == \
        [(k, v.shape) for k, v in b.state_dict().items()]


@pytest.mark.parametrize('kwargs', [
    # num_outs is not end_level - start_level + 1
    dict(start_level=1, end_level=2, num_outs=3),
    # num_outs is below len(in_channels) - start_level
    dict(start_level=1, num_outs=2),
    # end_level is above len(in_channels) - 1
    dict(start_level=1, end_level=4, num_outs=2),
    # num_outs is not end_level - start_level + 1
    dict(start_level=1, end_level=3, num_outs=1),
    # invalid add_extra_convs
    dict(start_level=1, add_extra_convs='on_xxx', num_outs=5),
])
def test_invalid_args_raise_assertion_error(kwargs: Dict) -> None:
    with pytest.raises(AssertionError) as info:
        RetinaFPN(in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, **kwargs)
    assert isinstance(info.value, RetinaConfigError)


@pytest.mark.parametrize('kwargs, extra_convs', [
    (dict(add_extra_convs=True), 'on_input'),
    (dict(add_extra_convs=False), False),  # extra levels by max pooling
    (dict(add_extra_convs=True, no_norm_on_lateral=False,
          norm_cfg=dict(type='BN', requires_grad=True)), 'on_input'),
    (dict(add_extra_convs=True, upsample_cfg=dict(mode='bilinear', align_corners=True)),
     'on_input'),
    (dict(add_extra_convs=True, upsample_cfg=dict(scale_factor=2)), 'on_input'),
    (dict(add_extra_convs='on_input'), 'on_input'),
    (dict(add_extra_convs='on_lateral'), 'on_lateral'),
    (dict(add_extra_convs='on_output'), 'on_output'),
])
@pytest.mark.parametrize('build', ['class', 'registry'])
def test_outputs(kwargs: Dict, extra_convs, build: str) -> None:
    cfg = dict(in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, start_level=1, num_outs=5,
               **kwargs)
    fpn = RetinaFPN(**cfg) if build == 'class' else MODELS.build(dict(type='RetinaFPN', **cfg))
    assert isinstance(fpn, RetinaFPN)
    assert fpn.add_extra_convs == extra_convs
    outs = fpn(feats())
    assert len(outs) == fpn.num_outs == 5
    for i, out in enumerate(outs):
        assert out.shape == (1, OUT_CHANNELS, S // 2**(i + 1), S // 2**(i + 1))
    has_bn = any(isinstance(m, _BatchNorm) for m in fpn.modules())
    assert has_bn == ('norm_cfg' in kwargs)
