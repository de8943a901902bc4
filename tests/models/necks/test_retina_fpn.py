"""RetinaFPN: equal to mmdet's FPN (weights and outputs), shapes / strides, validation, init."""
import math

import pytest
import torch
from mmdet.models.necks import FPN

from mmdet_retina_plugin.models.necks import RetinaFPN

IN_CHANNELS = [8, 16, 32, 64]  # C2-C5 of a scaled-down ResNet


def backbone_maps(h: int, w: int, batch: int = 2):
    """C2-C5 as a ResNet returns them for an (h, w) input: strides 4..32, ceil sizes."""
    torch.manual_seed(0)
    return [torch.randn(batch, c, math.ceil(h / s), math.ceil(w / s))
            for c, s in zip(IN_CHANNELS, (4, 8, 16, 32))]


@pytest.mark.parametrize('p6_source,extra,relu', [
    ('input', 'on_input', False), ('input', 'on_input', True),
    ('output', 'on_output', False), ('lateral', 'on_lateral', True)])
def test_equals_mmdet_fpn(p6_source, extra, relu):
    ours = RetinaFPN(IN_CHANNELS, 24, num_outs=5, start_level=1, p6_source=p6_source,
                     relu_before_p7=relu)
    stock = FPN(IN_CHANNELS, 24, num_outs=5, start_level=1, add_extra_convs=extra,
                relu_before_extra_convs=relu)
    stock.init_weights()
    ours.load_state_dict(stock.state_dict(), strict=True)
    stock.load_state_dict(ours.state_dict(), strict=True)
    inputs = backbone_maps(200, 152)  # odd top-down sizes: 25x19 -> 13x10 -> 7x5
    for a, b in zip(ours(inputs), stock(inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_param_names_equal_mmdet_with_norm():
    norm = dict(type='GN', num_groups=4)
    ours = RetinaFPN(IN_CHANNELS, 24, norm_cfg=norm, act_cfg=dict(type='ReLU'))
    stock = FPN(IN_CHANNELS, 24, 5, start_level=1, add_extra_convs='on_input', norm_cfg=norm,
                act_cfg=dict(type='ReLU'))
    assert list(ours.state_dict()) == list(stock.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in stock.state_dict().items()}
    assert 'fpn_convs.3.conv.weight' in ours.state_dict()  # P6
    assert 'fpn_convs.4.conv.weight' in ours.state_dict()  # P7


def test_shapes_and_strides():
    h, w = 256, 416
    fpn = RetinaFPN(IN_CHANNELS, 24)
    outs = fpn(backbone_maps(h, w))
    assert fpn.strides == (8, 16, 32, 64, 128)
    assert [tuple(o.shape) for o in outs] == [
        (2, 24, math.ceil(h / s), math.ceil(w / s)) for s in fpn.strides]


def test_p6_reads_c5_and_p7_relu():
    fpn = RetinaFPN(IN_CHANNELS, 24, relu_before_p7=True).eval()
    inputs = backbone_maps(128, 128)
    outs = fpn(inputs)
    p6, p7 = fpn.fpn_convs[3].conv, fpn.fpn_convs[4].conv
    torch.testing.assert_close(outs[3], p6(inputs[-1]))
    torch.testing.assert_close(outs[4], p7(outs[3].relu()))


def test_xavier_uniform_init():
    fpn = RetinaFPN(IN_CHANNELS, 24)
    fpn.init_weights()
    for name, p in fpn.named_parameters():
        if name.endswith('bias'):
            assert torch.count_nonzero(p) == 0, name
        else:
            fan_in, fan_out = p.shape[1] * p[0, 0].numel(), p.shape[0] * p[0, 0].numel()
            assert p.abs().max() <= math.sqrt(6 / (fan_in + fan_out)), name


@pytest.mark.parametrize('kwargs,field', [
    (dict(strides=(8, 16, 32, 64)), 'strides'),
    (dict(num_outs=4), 'strides'),
    (dict(strides=(8, 16, 32, 64, 96)), 'strides'),
    (dict(p6_source='on_input'), 'p6_source'),
    (dict(start_level=4), 'start_level'),
    (dict(num_outs=2, strides=None), 'num_outs'),
    (dict(out_channels=0), 'out_channels'),
])
def test_invalid_args(kwargs, field):
    args = dict(in_channels=IN_CHANNELS, out_channels=24)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        RetinaFPN(**args)


def test_wrong_number_of_inputs():
    with pytest.raises(ValueError, match='in_channels'):
        RetinaFPN(IN_CHANNELS, 24)(backbone_maps(64, 64)[1:])
