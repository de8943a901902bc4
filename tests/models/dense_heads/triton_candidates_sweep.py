"""The candidates' Triton kernel run by Triton's CPU interpreter, against the ATen ops it
replaces (steps 2 to 4 of ``retina_post_processing``).

Run by ``test_retina_candidates_triton.py`` in a subprocess with ``TRITON_INTERPRET=1`` (Triton
reads it when imported; a subprocess keeps it out of every other test). Checks, for NCHW and
channels-last maps, with and without mmdet's ``add_ctr_clamp``, clip, rescale (tensor or list),
``min_bbox_size`` and a negative ``score_thr``: scores, labels, boxes and validity equal to the
ATen path's (scores and boxes to float rounding: the interpreter's ``exp`` is numpy's), ``nan``
and ``inf`` deltas included; and that ``select_candidates`` takes the kernel there.

Prints one JSON line: ``{"cases", "kernel_calls", "failures"}``, or ``{"skip": reason}`` where
Triton does not import. Exits 1 if anything differs.
"""
import itertools
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2] / 'helpers'))


def maps(layout, gen, num_classes, num_base=9, batch=2,
         sizes=((8, 12), (4, 6), (2, 3), (1, 1))):
    cls = [torch.randn(batch, num_base * num_classes, h, w, generator=gen) * 2 - 3
           for h, w in sizes]
    box = [torch.randn(batch, num_base * 4, h, w, generator=gen) * 1.5 for h, w in sizes]
    box[0][0, 2, 1, 1] = float('inf')  # clamped like any large dw
    box[1][1, 3, 0, 0] = float('nan')  # propagates, as through torch.clamp
    box[2][0, 0, 1, 2] = float('-inf')
    if layout == 'channels_last':
        cls = [c.contiguous(memory_format=torch.channels_last) for c in cls]
        box = [b.contiguous(memory_format=torch.channels_last) for b in box]
    pixels = sum(h * w for h, w in sizes)
    xy = torch.rand(pixels * num_base, 2, generator=gen) * 80
    anchors = torch.cat([xy, xy + 4 + torch.rand(pixels * num_base, 2, generator=gen) * 40], 1)
    return cls, box, anchors


def gpu_compile_cases() -> None:
    """The kernel's launches for ``gpu_compile.compile_for_gpus``: through ``_decode_fused``
    (the launch ``select_candidates`` makes on a GPU), every compile-time branch both ways, for
    NCHW and channels-last maps; and a probe of CUDA's ``expf`` alone, whose own fused
    multiply-adds are the only ones the kernel may hold."""
    import triton
    import triton.language as tl
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
    from triton.language.extra import libdevice

    from mmdet_retina_plugin.models.dense_heads import retina_post_processing as post
    from mmdet_retina_plugin.models.dense_heads.retina_post_settings import PostProcessSettings

    gen = torch.Generator().manual_seed(0)
    for layout, on in (('nchw', True), ('channels_last', False)):
        cls, box, anchors = maps(layout, gen, 4)
        coder = DeltaXYWHBBoxCoder(clip_border=on, add_ctr_clamp=on, ctr_clamp=8)
        settings = PostProcessSettings.from_cfg(dict(
            nms_pre=40, score_thr=0.05 if on else -1.0, min_bbox_size=0.0 if on else -1.0,
            nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        values, pairs = post.select_pairs(cls, 40)
        post._decode_fused(values, pairs, box, anchors, 4, 9, coder, settings,
                           torch.tensor([[60, 90], [45, 100]]),
                           torch.tensor([[1.5, 2.0], [0.75, 0.5]]) if on else None)

    @triton.jit
    def expf_probe(x_ptr):
        tl.store(x_ptr, libdevice.exp(tl.load(x_ptr)))

    expf_probe[(1,)](torch.zeros(1), enable_fp_fusion=False)


def main() -> int:
    try:
        from mmdet_retina_plugin.models.dense_heads import retina_candidates_triton as rct
    except ImportError as exc:
        print(json.dumps({'skip': f'triton does not import: {exc}'}))
        return 0
    from interpreter_sweep import count_calls
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    from mmdet_retina_plugin.models.dense_heads import retina_pair_selection as pairs_module
    from mmdet_retina_plugin.models.dense_heads import retina_post_processing as post
    from mmdet_retina_plugin.models.dense_heads.retina_post_settings import PostProcessSettings

    calls = count_calls(rct, 'decode_candidates_triton')
    failures, cases = [], 0
    num_classes, k = 4, 40  # k above the coarsest level's 36 pairs: padding too
    gen = torch.Generator().manual_seed(0)
    img_hw = torch.tensor([[60, 90], [45, 100]])
    scales = ((1.5, 2.0), (0.75, 0.5))
    for layout, ctr, clip, (rescale, min_size, thr), together in itertools.product(
            ('nchw', 'channels_last'), (False, True), (True, False),
            ((None, 0.0, 0.05), ('tensor', -1.0, -1.0), ('list', 2.0, 0.3)), (False, True)):
        pairs_module.ranks_levels_together = lambda rows, k, t=together: t
        cases += 1
        case = (f'{layout} ctr_clamp={ctr} clip={clip} rescale={rescale} min={min_size} '
                f'thr={thr} together={together}')
        try:
            cls, box, anchors = maps(layout, gen, num_classes)
            coder = DeltaXYWHBBoxCoder(target_means=(0.1, -0.1, 0.05, 0.0),
                                       target_stds=(0.1, 0.1, 0.2, 0.2), clip_border=clip,
                                       add_ctr_clamp=ctr, ctr_clamp=8)
            settings = PostProcessSettings.from_cfg(dict(
                nms_pre=k, score_thr=thr, min_bbox_size=min_size,
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
            factors = None if rescale is None else \
                torch.tensor(scales) if rescale == 'tensor' else scales
            got = post.select_candidates(cls, box, anchors, num_classes, coder, settings, k,
                                         img_hw, factors)
            values, pairs = post.select_pairs(cls, k)
            want = post._decode(values, pairs, box, anchors, num_classes, 9, coder, settings,
                                img_hw, factors)
            assert torch.equal(got.labels, want.labels), 'labels'
            assert torch.equal(got.valid, want.valid), \
                f'valid: {int((got.valid != want.valid).sum())} differ'
            # some candidates pass; padding (-inf), where a level has fewer than k pairs and
            # the levels are ranked together, never does, even below a score_thr < 0
            assert got.valid.any(), 'no valid candidate'
            assert not got.valid[values == float('-inf')].any(), 'padding'
            torch.testing.assert_close(got.scores, want.scores, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(got.bboxes, want.bboxes, rtol=1e-6, atol=1e-4,
                                       equal_nan=True)
            assert got.bboxes.isnan().any() == want.bboxes.isnan().any(), 'nan'
        except Exception:  # noqa: BLE001  (report every failing case, not the first)
            failures.append(f'{case}: {traceback.format_exc(limit=4)}')
    print(json.dumps({'cases': cases, 'kernel_calls': len(calls), 'failures': failures}))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
