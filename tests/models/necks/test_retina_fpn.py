"""RetinaFPN: drop-in for mmdet's FPN (same arguments, defaults, weights, outputs and gradients
for every option), paper-named spellings, strides, validation, init."""
import math
from typing import Dict, List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdet.models.necks import FPN
from mmdet.registry import MODELS

import mmdet_retina_plugin  # noqa: F401  (registers RetinaFPN)
from mmdet_retina_plugin.models.necks import RetinaFPN
from mmdet_retina_plugin.models.necks.retina_fpn_args import EXTRA_CONV_SOURCES

IN_CHANNELS = [8, 16, 32, 64]  # C2-C5 of a scaled-down ResNet
GN = dict(type='GN', num_groups=4)


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def backbone_maps(h: int, w: int, batch: int = 2, in_channels: List[int] = IN_CHANNELS,
                  seed: int = 0) -> List[torch.Tensor]:
    """C2.. as a ResNet returns them for an (h, w) input: strides 4, 8, .., ceil sizes."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, math.ceil(h / 2**(i + 2)), math.ceil(w / 2**(i + 2)),
                        generator=gen, requires_grad=True) for i, c in enumerate(in_channels)]


def build_pair(seed: int = 0, **kwargs):
    """Stock FPN and ours from the same config dict with only ``type`` changed, sharing one
    random state_dict (biases and norm affine included, so none of them is trivially 0 / 1)."""
    stock = MODELS.build(dict(type='FPN', **kwargs))
    ours = MODELS.build(dict(type='RetinaFPN', **kwargs))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in stock.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    ours.load_state_dict(stock.state_dict(), strict=True)
    stock.load_state_dict(ours.state_dict(), strict=True)
    return stock, ours


def outputs_and_grads(model: torch.nn.Module, inputs: List[torch.Tensor]):
    """Outputs, and gradients of a fixed random projection of them w.r.t. params and inputs."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    outs = model(inputs)
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    params = [p for _, p in sorted(model.named_parameters())]
    grads = torch.autograd.grad(loss, params + inputs, allow_unused=True)
    return outs, grads


def assert_same_as_stock(inputs: List[torch.Tensor], seed: int = 0, **kwargs) -> None:
    stock, ours = build_pair(seed, **kwargs)
    assert list(ours.state_dict()) == list(stock.state_dict())
    outs_ours, grads_ours = outputs_and_grads(ours, inputs)
    outs_stock, grads_stock = outputs_and_grads(stock, inputs)
    assert len(outs_ours) == len(outs_stock) == kwargs['num_outs']
    for a, b in zip(outs_ours, outs_stock):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(grads_ours, grads_stock):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('kwargs', [
    # every extra-level mode, from C2 and from C3
    *(dict(start_level=s, num_outs=n, add_extra_convs=mode)
      for s, n in ((0, 5), (1, 5)) for mode in (False, True, 'on_input', 'on_lateral',
                                                'on_output')),
    # P6 and P7 convs with ReLU in between; three extra levels
    dict(start_level=1, num_outs=6, add_extra_convs='on_input', relu_before_extra_convs=True),
    dict(start_level=1, num_outs=6, add_extra_convs='on_output', relu_before_extra_convs=True),
    dict(start_level=2, num_outs=5, add_extra_convs=False, relu_before_extra_convs=True),
    # end_level before the last backbone level: no extra levels
    dict(start_level=1, end_level=2, num_outs=2),
    dict(start_level=0, end_level=0, num_outs=1, add_extra_convs='on_input'),
    dict(start_level=0, end_level=3, num_outs=6, add_extra_convs='on_lateral'),
    # norms, lateral norms off, activations, conv config
    dict(start_level=1, num_outs=5, add_extra_convs='on_input', norm_cfg=GN),
    dict(start_level=1, num_outs=5, add_extra_convs='on_input', norm_cfg=GN,
         no_norm_on_lateral=True, act_cfg=dict(type='ReLU')),
    dict(start_level=0, num_outs=5, norm_cfg=dict(type='BN'), no_norm_on_lateral=True),
    dict(start_level=0, num_outs=4, no_norm_on_lateral=True, act_cfg=dict(type='ReLU'),
         conv_cfg=dict(type='Conv2d')),
    # upsampling
    dict(start_level=1, num_outs=5, upsample_cfg=dict(mode='bilinear', align_corners=False)),
    dict(start_level=0, num_outs=5, upsample_cfg=dict(mode='bilinear', align_corners=True)),
    dict(start_level=0, num_outs=4, upsample_cfg=dict(mode='bicubic')),
    dict(start_level=0, num_outs=4, upsample_cfg=dict(mode='nearest-exact')),
    dict(start_level=0, num_outs=4, upsample_cfg=dict(mode='area')),
], ids=repr)
def test_equals_mmdet_fpn(kwargs: Dict) -> None:
    """Outputs and gradients bitwise equal to mmdet's FPN; odd top-down sizes
    (25x19 -> 13x10 -> 7x5 -> 4x3)."""
    assert_same_as_stock(backbone_maps(100, 76), in_channels=IN_CHANNELS, out_channels=8,
                         **kwargs)


@pytest.mark.parametrize('upsample_cfg', [dict(scale_factor=2),
                                          dict(scale_factor=2, mode='bilinear'),
                                          dict(scale_factor=2.0, mode='nearest')])
def test_equals_mmdet_fpn_scale_factor(upsample_cfg: Dict) -> None:
    """A fixed scale factor needs sizes that halve exactly (256 x 128 input)."""
    assert_same_as_stock(backbone_maps(256, 128), in_channels=IN_CHANNELS, out_channels=8,
                         num_outs=5, start_level=1, add_extra_convs='on_input',
                         upsample_cfg=upsample_cfg)


def test_defaults_are_mmdets() -> None:
    """A config that omits an argument builds what mmdet's FPN builds: start_level=0,
    max-pool extra levels, nearest upsampling, norm on laterals."""
    kwargs = dict(in_channels=IN_CHANNELS, out_channels=8, num_outs=6, norm_cfg=GN)
    stock, ours = build_pair(**kwargs)
    assert (ours.start_level, ours.end_level, ours.add_extra_convs, ours.p6_source,
            ours.relu_before_extra_convs, ours.no_norm_on_lateral, ours.upsample_cfg,
            ours.strides) == (0, -1, False, None, False, False, dict(mode='nearest'), None)
    assert len(ours.fpn_convs) == 4 and 'lateral_convs.0.gn.weight' in ours.state_dict()
    assert_same_as_stock(backbone_maps(96, 64), **kwargs)
    default = RetinaFPN(IN_CHANNELS, 8, 5)
    assert default.init_cfg == FPN(IN_CHANNELS, 8, 5).init_cfg


def test_positional_args_follow_mmdet() -> None:
    ours = RetinaFPN(IN_CHANNELS, 8, 5, 1, -1, 'on_lateral', True, True, None, GN)
    assert (ours.start_level, ours.add_extra_convs, ours.relu_before_extra_convs,
            ours.no_norm_on_lateral) == (1, 'on_lateral', True, True)
    assert list(ours.state_dict()) == list(
        FPN(IN_CHANNELS, 8, 5, 1, -1, 'on_lateral', True, True, None, GN).state_dict())


@pytest.mark.parametrize('p6_source,mode', [('input', 'on_input'), ('lateral', 'on_lateral'),
                                             ('output', 'on_output')])
@pytest.mark.parametrize('relu', [False, True])
def test_paper_names_map_to_mmdet(p6_source: str, mode: str, relu: bool) -> None:
    """p6_source / relu_before_p7 build what add_extra_convs / relu_before_extra_convs build,
    alone or together with matching mmdet values."""
    kwargs = dict(in_channels=IN_CHANNELS, out_channels=8, num_outs=6, start_level=1)
    stock, _ = build_pair(**kwargs, add_extra_convs=mode, relu_before_extra_convs=relu)
    inputs = backbone_maps(100, 76)
    expected = stock(inputs)
    for extra in (dict(), dict(add_extra_convs=mode), dict(relu_before_extra_convs=relu),
                  dict(add_extra_convs=True) if mode == 'on_input' else dict()):
        ours = RetinaFPN(**kwargs, p6_source=p6_source, relu_before_p7=relu, **extra)
        assert (ours.add_extra_convs, ours.p6_source, ours.relu_before_extra_convs,
                ours.relu_before_p7) == (mode, p6_source, relu, relu)
        ours.load_state_dict(stock.state_dict(), strict=True)
        for a, b in zip(ours(inputs), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('kwargs,fields', [
    (dict(p6_source='input', add_extra_convs='on_output'), ('p6_source', 'add_extra_convs')),
    (dict(p6_source='lateral', add_extra_convs=True), ('p6_source', 'add_extra_convs')),
    (dict(relu_before_p7=False, relu_before_extra_convs=True),
     ('relu_before_p7', 'relu_before_extra_convs')),
])
def test_contradicting_spellings_raise(kwargs: Dict, fields) -> None:
    with pytest.raises(ValueError) as info:
        RetinaFPN(IN_CHANNELS, 8, 5, start_level=1, **kwargs)
    assert all(f in str(info.value) for f in fields)


def test_param_names_equal_mmdet_with_norm() -> None:
    norm = dict(type='GN', num_groups=4)
    kwargs = dict(in_channels=IN_CHANNELS, out_channels=24, num_outs=5, start_level=1,
                  add_extra_convs='on_input', norm_cfg=norm, act_cfg=dict(type='ReLU'))
    ours, stock = RetinaFPN(**kwargs), FPN(**kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in stock.state_dict().items()}
    assert list(ours.state_dict()) == list(stock.state_dict())
    assert 'fpn_convs.3.conv.weight' in ours.state_dict()  # P6
    assert 'fpn_convs.4.conv.weight' in ours.state_dict()  # P7


def test_shapes_and_strides() -> None:
    h, w = 256, 416
    fpn = RetinaFPN(IN_CHANNELS, 24, 5, start_level=1, p6_source='input',
                    strides=(8, 16, 32, 64, 128))
    outs = fpn(backbone_maps(h, w))
    assert fpn.strides == (8, 16, 32, 64, 128)
    assert [tuple(o.shape) for o in outs] == [
        (2, 24, math.ceil(h / s), math.ceil(w / s)) for s in fpn.strides]


def test_p6_reads_c5_and_p7_relu() -> None:
    fpn = RetinaFPN(IN_CHANNELS, 24, 5, start_level=1, p6_source='input',
                    relu_before_p7=True).eval()
    inputs = backbone_maps(128, 128)
    outs = fpn(inputs)
    p6, p7 = fpn.fpn_convs[3].conv, fpn.fpn_convs[4].conv
    torch.testing.assert_close(outs[3], p6(inputs[-1]))
    torch.testing.assert_close(outs[4], p7(outs[3].relu()))


def test_max_pool_levels_subsample() -> None:
    """add_extra_convs=False: each extra level takes every second pixel of the previous one."""
    fpn = RetinaFPN(IN_CHANNELS, 8, 6)
    outs = fpn(backbone_maps(100, 76))
    assert len(fpn.fpn_convs) == 4
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2], rtol=0, atol=0)
    torch.testing.assert_close(outs[5], outs[4][..., ::2, ::2], rtol=0, atol=0)


def test_xavier_uniform_init() -> None:
    fpn = RetinaFPN(IN_CHANNELS, 24, 5, start_level=1, add_extra_convs='on_input')
    fpn.init_weights()
    for name, p in fpn.named_parameters():
        if name.endswith('bias'):
            assert torch.count_nonzero(p) == 0, name
        else:
            fan_in, fan_out = p.shape[1] * p[0, 0].numel(), p.shape[0] * p[0, 0].numel()
            assert p.abs().max() <= math.sqrt(6 / (fan_in + fan_out)), name


@pytest.mark.parametrize('kwargs,field', [
    (dict(strides=(8, 16, 32, 64)), 'strides'),
    (dict(strides=(8, 16, 32, 64, 96)), 'strides'),
    (dict(p6_source='on_input'), 'p6_source'),
    (dict(add_extra_convs='input'), 'add_extra_convs'),
    (dict(add_extra_convs=None), 'add_extra_convs'),
    (dict(start_level=4), 'start_level'),
    (dict(start_level=-1), 'start_level'),
    (dict(start_level=1, num_outs=2), 'num_outs'),
    (dict(start_level=1, end_level=2, num_outs=3), 'num_outs'),
    (dict(start_level=2, end_level=1, num_outs=1), 'end_level'),
    (dict(end_level=4), 'end_level'),
    (dict(end_level=-2), 'end_level'),
    (dict(out_channels=0), 'out_channels'),
    (dict(in_channels=[]), 'in_channels'),
    (dict(upsample_cfg='nearest'), 'upsample_cfg'),
    (dict(upsample_cfg=dict(mode='linear')), 'mode'),
    (dict(upsample_cfg=dict(size=4)), 'upsample_cfg keys'),
    (dict(upsample_cfg=dict(mode='nearest', align_corners=False)), 'align_corners'),
    (dict(upsample_cfg=dict(scale_factor=0)), 'scale_factor'),
])
def test_invalid_args(kwargs: Dict, field: str) -> None:
    args = dict(in_channels=IN_CHANNELS, out_channels=24, num_outs=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        RetinaFPN(**args)


def test_wrong_number_of_inputs() -> None:
    with pytest.raises(ValueError, match='in_channels'):
        RetinaFPN(IN_CHANNELS, 24, 5)(backbone_maps(64, 64)[1:])


@st.composite
def fpn_configs(draw) -> Dict:
    """Random FPN arguments within mmdet's accepted ranges."""
    num_ins = draw(st.integers(1, 4))
    start = draw(st.integers(0, num_ins - 1))
    end = draw(st.sampled_from([-1] + list(range(start, num_ins))))
    if end in (-1, num_ins - 1):
        num_outs = draw(st.integers(num_ins - start, num_ins - start + 3))
    else:
        num_outs = end - start + 1
    upsample = draw(st.sampled_from([dict(mode='nearest'), dict(mode='bilinear'),
                                     dict(mode='bilinear', align_corners=True),
                                     dict(mode='nearest', scale_factor=2)]))
    return dict(
        in_channels=draw(st.lists(st.integers(1, 6), min_size=num_ins, max_size=num_ins)),
        out_channels=draw(st.sampled_from([2, 4])), num_outs=num_outs, start_level=start,
        end_level=end, add_extra_convs=draw(st.sampled_from((False, True) + EXTRA_CONV_SOURCES)),
        relu_before_extra_convs=draw(st.booleans()),
        no_norm_on_lateral=draw(st.booleans()),
        norm_cfg=draw(st.sampled_from([None, dict(type='GN', num_groups=2),
                                       dict(type='BN')])),
        act_cfg=draw(st.sampled_from([None, dict(type='ReLU')])),
        upsample_cfg=upsample)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(cfg=fpn_configs(), size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
       batch=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_random_configs_equal_mmdet(cfg: Dict, size, batch: int, seed: int) -> None:
    """Random options and input sizes (odd, tiny, 1x1 included): same outputs and gradients
    as mmdet's FPN; a fixed scale factor uses sizes that halve exactly."""
    h, w = size
    if 'scale_factor' in cfg['upsample_cfg']:
        h, w = 2**(h % 4) * 16, 2**(w % 4) * 16
    if cfg['norm_cfg'] == dict(type='BN'):
        batch = 2  # training-mode BN needs more than one value per channel on 1x1 levels
    inputs = backbone_maps(h, w, batch, cfg['in_channels'], seed)
    assert_same_as_stock(inputs, seed, **cfg)
