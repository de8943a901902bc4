"""The head's subnets on all levels at once, in one canvas: the layout, the same maps and
gradients as level by level (and as mmdet's RetinaHead), 10 convolutions instead of 50, and
when it is used (``pack_levels``: 'auto' for small CUDA batches, never for a head with a norm,
while tracing or compiling)."""
import itertools
import math
import warnings
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from head_pairs import C, build_pair
from mmdet.registry import MODELS
from torch.profiler import ProfilerActivity, profile

from mmdet_retina_plugin.models.dense_heads import retina_level_packing as packing
from mmdet_retina_plugin.models.dense_heads.retina_level_packing import canvas_layout

# RetinaNet's pyramid (strides 8 to 128) of an 800x1216 batch
P3_P7 = ((100, 152), (50, 76), (25, 38), (13, 19), (7, 10))


def pyramid(hw, strides=(8, 16, 32, 64, 128)):
    return tuple((math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in strides)


def _check_layout(sizes):
    layout = canvas_layout(sizes)
    assert layout.sizes == sizes
    owner = torch.full((layout.height + 2, layout.width + 2), -1)  # a border of padding
    for i in range(len(sizes)):
        rows, cols = layout.slices(i)
        assert rows.stop <= layout.height and cols.stop <= layout.width
        # the level and the ring of cells around it (what a 3x3 conv reads) hold no other level
        ring = owner[rows.start:rows.stop + 2, cols.start:cols.stop + 2]
        assert (ring == -1).all(), f'level {i} touches another'
        owner[rows.start + 1:rows.stop + 1, cols.start + 1:cols.stop + 1] = i
    area = sum(h * w for h, w in sizes)
    assert layout.height * layout.width <= packing.MAX_AREA_RATIO * area


@pytest.mark.parametrize('sizes', [P3_P7, pyramid((512, 768)), pyramid((1333, 800)),
                                   pyramid((301, 203)), pyramid((640, 640), (8, 16, 32))])
def test_layout_separates_levels_by_a_zero_cell(sizes):
    _check_layout(sizes)


def test_layouts_of_many_image_sizes():
    packed = 0
    for hw in itertools.product(range(64, 1400, 37), range(64, 1400, 53)):
        for strides in ((8, 16, 32, 64, 128), (8, 16, 32), (4, 8, 16, 32, 64)):
            if canvas_layout(pyramid(hw, strides)) is not None:
                _check_layout(pyramid(hw, strides))
                packed += 1
    assert packed >= 2800  # of 2886: all but some of the smallest images


def test_layout_of_retinanet_pyramid():
    layout = canvas_layout(P3_P7)
    assert (layout.height, layout.width) == (151, 152)  # P4..P7 in one row under P3
    assert layout.origins == ((0, 0), (101, 0), (101, 77), (101, 116), (101, 136))


@pytest.mark.parametrize('sizes', [((32, 32),), ((16, 16),) * 5, ((2, 40), (40, 2)),
                                   ((8, 8), (0, 4)), pyramid((97, 61))])
def test_no_layout_where_packing_gains_nothing(sizes):
    assert canvas_layout(sizes) is None


def _heads(**head):
    """mmdet's RetinaHead and ours (packing always) with the same weights, spread out enough
    that ReLU zeroes a good part of every layer."""
    stock, ours = build_pair(ours_only=dict(pack_levels=True), **head)
    for m in stock.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.2)
            if m.bias is not None:
                torch.nn.init.normal_(m.bias, std=0.2)
    ours.load_state_dict(stock.state_dict(), strict=False)
    return stock, ours


def _feats(sizes, batch=2, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, C, h, w, generator=g) for h, w in sizes]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    return feats


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('sizes', [pyramid((256, 320)), pyramid((301, 203)),
                                   pyramid((64, 1000))])  # P6, P7: one row
def test_canvas_gives_the_levels_maps_and_gradients(channels_last, sizes):
    stock, ours = _heads()
    if channels_last:
        stock, ours = (m.to(memory_format=torch.channels_last) for m in (stock, ours))
    feats = _feats(sizes, channels_last=channels_last)
    s_in = [f.clone().requires_grad_() for f in feats]
    o_in = [f.clone().requires_grad_() for f in feats]
    expected, got = stock(s_in), ours(o_in)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for e, o in zip(sum(expected, []), sum(got, [])):
        assert o.shape == e.shape and o.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)
    # a loss that weighs every output cell differently reaches every weight and input cell
    weights = [torch.rand(o.shape, generator=torch.Generator().manual_seed(i))
               for i, o in enumerate(sum(got, []))]
    for outs in (expected, got):
        sum((o * w).sum() for o, w in zip(sum(outs, []), weights)).backward()
    for a, b in itertools.chain(zip(s_in, o_in), zip(stock.parameters(), ours.parameters())):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4,
                                   atol=1e-5 * a.grad.abs().max().item())


def test_canvas_takes_any_iterable_of_maps():
    _, ours = _heads()
    feats = _feats(P3_P7[:3], batch=1)
    with torch.no_grad():
        for a, b in zip(sum(ours(feats), []), sum(ours(iter(feats)), [])):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def _convs(head, feats):
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        head(feats)
    return Counter(e.name for e in prof.events())['aten::conv2d']


def test_canvas_runs_each_layer_once():
    _, ours = _heads()  # 2 stacked convs + the predictor, per subnet
    feats = _feats(P3_P7[:3], batch=1)
    assert _convs(ours, feats) == 6
    ours.pack_levels = False
    assert _convs(ours, feats) == 6 * 3


def _dilate(head):
    for m in head.cls_convs:
        m.conv.dilation, m.conv.padding = (2, 2), (2, 2)


@pytest.mark.parametrize('head, change', [(dict(norm_cfg=dict(type='GN', num_groups=4)), None),
                                          (dict(), _dilate)], ids=['GN', 'dilated'])
def test_heads_other_than_plain_convs_run_level_by_level(head, change):
    stock, ours = _heads(**head)
    if change is not None:
        change(stock)
        change(ours)
    feats = _feats(P3_P7[:3], batch=1)
    assert _convs(ours, feats) == 6 * 3
    for e, o in zip(sum(stock(feats), []), sum(ours(feats), [])):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


def test_a_failing_canvas_falls_back_to_levels_once(monkeypatch):
    stock, ours = _heads()
    feats = _feats(P3_P7[:3], batch=1)

    def broken(x, layout):
        raise RuntimeError('no clamp here')

    monkeypatch.setattr(packing, 'relu_inside', broken)
    with pytest.warns(UserWarning, match='canvas failed .*no clamp here'):
        got = ours(feats)
    for e, o in zip(sum(stock(feats), []), sum(got, [])):
        torch.testing.assert_close(o, e, rtol=0, atol=0)
    assert ours.pack_levels is False
    assert _convs(ours, feats) == 6 * 3


def test_bad_maps_raise_their_own_error():
    _, ours = _heads()
    feats = _feats(P3_P7[:3], batch=1)
    feats[1] = feats[1][:, :C - 1]  # a channel short
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the canvas is not blamed: no warning
        with pytest.raises(RuntimeError, match='channels'):
            ours(feats)
    assert ours.pack_levels is True


def _like(sizes, batch, cuda):
    """Stand-ins for pyramid maps: what the rule reads of them."""
    return [SimpleNamespace(shape=(batch, C, h, w), is_cuda=cuda) for h, w in sizes]


def test_when_levels_are_packed(monkeypatch):
    layout = canvas_layout(P3_P7)
    assert packing.use_canvas('auto', _like(P3_P7, 1, True)) == layout
    assert packing.use_canvas('auto', _like(P3_P7, 3, True)) == layout
    assert packing.use_canvas('auto', _like(P3_P7, 4, True)) is None  # the GPU's work rules
    assert packing.use_canvas('auto', _like(P3_P7, 1, False)) is None  # a CPU gains nothing
    assert packing.use_canvas(True, _like(P3_P7, 8, False)) == layout
    assert packing.use_canvas(False, _like(P3_P7, 1, True)) is None
    assert packing.use_canvas(True, _like(P3_P7[:1], 1, True)) is None
    monkeypatch.setattr(packing, 'is_compiling', lambda: True)
    assert packing.use_canvas(True, _like(P3_P7, 1, True)) is None


def test_traced_head_runs_level_by_level():
    _, ours = _heads()
    feats = _feats(P3_P7[:3], batch=1)

    class Maps(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, *x):
            return tuple(sum(self.head(list(x)), []))

    traced = torch.jit.trace(Maps(ours), tuple(feats))
    assert str(traced.inlined_graph).count('aten::_convolution') == 6 * 3


def test_inference_mode_then_training():
    """The clamp bounds made in inference mode are not reused where autograd saves them."""
    _, ours = _heads()
    feats = _feats(P3_P7[:3], batch=1)
    with torch.inference_mode():
        ours(feats)
    x = [f.clone().requires_grad_() for f in feats]
    sum(o.sum() for o in sum(ours(x), [])).backward()
    assert all(t.grad is not None for t in x)


@pytest.mark.parametrize('value', ['yes', None, 1])
def test_bad_pack_levels_fails_at_build(value):
    with pytest.raises(ValueError, match='pack_levels'):
        MODELS.build(dict(type='RetinaNetHead', num_classes=3, in_channels=C, feat_channels=C,
                          pack_levels=value))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_auto_packs_a_cuda_batch_of_one():
    stock, ours = _heads()
    stock, ours = stock.cuda(), ours.cuda()
    ours.pack_levels = 'auto'
    feats = [f.cuda() for f in _feats(pyramid((800, 1216)), batch=1)]
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        got = ours(feats)
    assert Counter(e.name for e in prof.events())['aten::conv2d'] == 6
    with torch.no_grad():
        for e, o in zip(sum(stock(feats), []), sum(got, [])):
            torch.testing.assert_close(o, e, rtol=1e-3, atol=1e-3)
