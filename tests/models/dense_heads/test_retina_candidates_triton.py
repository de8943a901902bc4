"""Steps 2 to 4 of the post-processing as one Triton kernel (``retina_candidates_triton.py``):
equal to the ATen ops it replaces (through Triton's CPU interpreter, and on CUDA), compiled for
CUDA GPUs, the ops left around it, when ``select_candidates`` takes it, and the fallback when it
fails."""
import warnings
from pathlib import Path

import pytest
import torch
from gpu_compile import ARCHES, compile_for_gpus
from head_pairs import METAS, build_pair, random_maps
from interpreter_sweep import run_interpreter_sweep
from test_retina_post_processing import _kernel_ops

from mmdet_retina_plugin.models.dense_heads import retina_post_processing as post
from mmdet_retina_plugin.models.dense_heads.retina_post_settings import PostProcessSettings

SWEEP = Path(__file__).with_name('triton_candidates_sweep.py')


def test_kernel_under_interpreter_equals_the_aten_ops():
    report = run_interpreter_sweep(SWEEP)
    # 2 layouts x ctr clamp x clip x 3 (rescale, min size, score_thr) x 2 rankings
    assert report['cases'] == 48
    assert report['kernel_calls'] == 48  # select_candidates took the kernel every time


def test_kernel_compiles_for_cuda_gpus():
    """The GPU build, which the interpreter does not run, for every GPU in ``ARCHES`` and every
    compile-time branch: CUDA's ``expf`` from libdevice, and no fused multiply-add but the
    three ``expf``'s own (a fused one rounds once where ATen's ops round twice)."""
    kernels = compile_for_gpus(SWEEP)
    kernel = kernels['_candidates_kernel']
    assert kernel['fused_multiply_adds'] == 3 * kernels['expf_probe']['fused_multiply_adds']
    assert kernel['arches'] == list(ARCHES)
    assert kernel['dtypes'] == ['float32']
    for flag in ('CTR_CLAMP', 'CLIP', 'RESCALE', 'MIN_SIZE', 'NEG_THR'):
        assert kernel['constexprs'][flag] == [False, True], flag
    assert kernel['constexprs']['PRECISE'] == [True]


def _inputs(channels_last=False, device='cpu'):
    _, ours = build_pair(test=dict(nms_pre=100))
    cls, box = random_maps()
    if channels_last:
        cls = [c.contiguous(memory_format=torch.channels_last) for c in cls]
        box = [b.contiguous(memory_format=torch.channels_last) for b in box]
    cls, box = [c.to(device) for c in cls], [b.to(device) for b in box]
    anchors, _ = ours.anchor_cache.anchors([c.shape[-2:] for c in cls], torch.device(device),
                                           cls[0].dtype)
    settings = PostProcessSettings.from_cfg(ours.test_cfg)
    img_hw = torch.tensor([m['img_shape'] for m in METAS], device=device)
    scales = [m['scale_factor'] for m in METAS]
    return ours, cls, box, anchors, settings, img_hw, scales


@pytest.fixture
def triton_stub(monkeypatch):
    """The kernel's route on the CPU, with the launch stubbed: what runs around it."""
    rct = pytest.importorskip('mmdet_retina_plugin.models.dense_heads.retina_candidates_triton')
    launches = []

    def stub(values, *args, **kwargs):  # allocations only, as the real one
        launches.append(values.shape)
        batch, m = values.shape
        return (torch.empty(batch, m, 4), torch.empty(batch, m),
                torch.empty(batch, m, dtype=torch.long), torch.empty(batch, m, dtype=torch.bool))

    monkeypatch.setattr(rct, 'decode_candidates_triton', stub)
    monkeypatch.setattr(post, 'on_triton_device', lambda t: True)
    return launches


@pytest.mark.parametrize('channels_last', [False, True])
def test_one_launch_and_one_copy_replace_the_aten_ops(triton_stub, channels_last):
    ours, cls, box, anchors, settings, img_hw, scales = _inputs(channels_last)
    values, pairs = post.select_pairs(cls, 100)
    args = (values, pairs, box, anchors, ours.cls_out_channels, 9, ours.bbox_coder, settings,
            img_hw, torch.tensor(scales))
    post._decode_fused(*args)  # the coder's constants are cached from here on
    triton_stub.clear()
    fused = _kernel_ops(lambda: post._decode_fused(*args))
    aten = _kernel_ops(lambda: post._decode(*args))
    # the levels' deltas in one copy and the image sizes and scale factors as fp32 (the
    # image sizes here are ints; predict_by_feat's are fp32 already), then the kernel
    assert dict(fused) == {'aten::cat': 1, 'aten::to': 2}, fused
    assert sum(aten.values()) >= 35, aten
    assert len(triton_stub) == 1


def test_select_candidates_takes_the_kernel_only_where_it_applies(triton_stub, monkeypatch):
    ours, cls, box, anchors, settings, img_hw, scales = _inputs()

    def select(cls, box, anchors, coder=ours.bbox_coder, **kwargs):
        return post.select_candidates(cls, box, anchors, ours.cls_out_channels, coder,
                                      settings, 100, img_hw, scales, **kwargs)

    select(cls, box, anchors)
    assert len(triton_stub) == 1
    # fp64, another coder, a fixed-width top-k (the exporter's), tracing: the ATen ops
    select([c.double() for c in cls], [b.double() for b in box], anchors.double())
    select(cls, box, anchors, coder=type('Coder', (type(ours.bbox_coder),), {})())
    select(cls, box, anchors, topk=lambda rows, k: rows.topk(k, dim=1))
    # anchors elsewhere than the maps: the ATen ops, whose error it is to raise
    values, _ = post.select_pairs(cls, 100)
    assert post._fused(values, box, anchors, ours.bbox_coder)
    assert not post._fused(values, box, anchors.to('meta'), ours.bbox_coder)
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
    select(cls, box, anchors)
    assert len(triton_stub) == 1


def test_a_failing_kernel_falls_back_to_the_aten_ops_once(monkeypatch):
    rct = pytest.importorskip('mmdet_retina_plugin.models.dense_heads.retina_candidates_triton')
    ours, cls, box, anchors, settings, img_hw, scales = _inputs()

    def broken(*args, **kwargs):
        raise RuntimeError('no such PTX')

    monkeypatch.setattr(rct, 'decode_candidates_triton', broken)
    monkeypatch.setattr(post, 'on_triton_device', lambda t: True)
    monkeypatch.setattr(post, '_FUSED', post.Switch())
    select = lambda: post.select_candidates(  # noqa: E731
        cls, box, anchors, ours.cls_out_channels, ours.bbox_coder, settings, 100, img_hw,
        scales)
    with pytest.warns(UserWarning, match="candidates' Triton kernel failed .*no such PTX"):
        got = select()
    assert not post._FUSED.on
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        again = select()
    values, pairs = post.select_pairs(cls, 100)
    want = post._decode(values, pairs, box, anchors, ours.cls_out_channels, 9,
                        ours.bbox_coder, settings, img_hw, scales)
    for g, a, w in zip(got, again, want):
        assert torch.equal(g, w) and torch.equal(a, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('channels_last', [False, True])
def test_on_cuda_the_kernel_equals_the_aten_ops(channels_last):
    ours, cls, box, anchors, settings, img_hw, scales = _inputs(channels_last, 'cuda')
    box[0][0, 2, 3, 3] = float('nan')
    values, pairs = post.select_pairs(cls, 100)
    args = (values, pairs, box, anchors, ours.cls_out_channels, 9, ours.bbox_coder, settings,
            img_hw, scales)
    assert post._fused(values, box, anchors, ours.bbox_coder)
    got, want = post._decode_fused(*args), post._decode(*args)
    assert torch.equal(got.labels, want.labels) and torch.equal(got.valid, want.valid)
    # the same fp32 operations in the same order; an exp a unit in the last place off would
    # show in the boxes as a thousandth of a pixel at most
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.bboxes, want.bboxes, rtol=1e-6, atol=1e-3, equal_nan=True)
