"""The Triton greedy-NMS kernel run by Triton's CPU interpreter, against the pure-tensor rounds
and mmcv.

Run by ``test_triton_nms.py`` in a subprocess with ``TRITON_INTERPRET=1`` (Triton reads it when
imported; a subprocess keeps it out of every other test). Checks

* ``greedy_triton`` against ``batched_nms._greedy_rounds`` on the same sorted, shifted boxes,
  with mmcv's CPU and CUDA IoU tests, pixel offsets 0 and 1 and two bounds on the kept boxes per
  group (groups larger than the kernel's block of later boxes, shrunk to 8 here);
* ``batched_nms_padded`` end to end (it picks the kernel under the interpreter) against mmcv's
  ``batched_nms`` image by image.

Prints one JSON line: ``{"kernel_cases", "end_to_end_cases", "triton_calls", "failures"}``, or
``{"skip": reason}`` where Triton does not import. Exits 1 if anything differs.
"""
import itertools
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2] / 'helpers')]


def gpu_compile_cases() -> None:
    """The kernel's launches for ``gpu_compile.compile_for_gpus``, with mmcv's CUDA and CPU
    IoU tests, at the kernel's own block size."""
    from mmdet_retina_plugin.models.layers._triton_nms import greedy_triton

    xy = torch.rand(12, 2) * 50
    boxes = torch.cat([xy, xy + 10], 1)
    segment = torch.tensor([0] * 5 + [1] * 7)
    for cuda_rule in (True, False):
        greedy_triton(boxes, segment, 100, 0.5, 0, cuda_rule)


def main() -> int:
    try:
        from mmdet_retina_plugin.models.layers import _triton_nms
    except ImportError as exc:
        print(json.dumps({'skip': f'triton does not import: {exc}'}))
        return 0
    from interpreter_sweep import count_calls
    from test_batched_nms import (
        assert_same_keep,
        clustered_boxes,
        padded,
        per_image_mmcv,
        run_ours,
    )

    from mmdet_retina_plugin.models.layers import batched_nms as bn

    greedy_triton = _triton_nms.greedy_triton
    calls = count_calls(_triton_nms, 'greedy_triton')
    # small blocks, so that the interpreter's groups of a few dozen boxes span several
    _triton_nms._BLOCK = 8
    failures = []
    g = torch.Generator().manual_seed(0)
    # 3 classes: groups of ~10-30 boxes, several blocks of later boxes
    images = [clustered_boxes(n, 3, g) for n in (70, 30, 0, 3)]
    # the kernel cases group by class alone: any grouping will do
    boxes, scores, labels, valid = (t.flatten(0, 1) for t in padded(images))
    kernel_cases = 0
    for cuda_rule, offset, max_kept, thr in itertools.product(
            (False, True), (0, 1), (3, None), (0.5,)):
        kernel_cases += 1
        case = f'cuda_rule={cuda_rule} offset={offset} max_kept={max_kept} thr={thr}'
        try:
            shifted = bn.class_offset_boxes(boxes[None], labels[None], valid[None])[0]
            order, segment, largest, _ = bn._sorted_candidates(scores, labels, valid)
            num = int(valid.sum())
            max_kept = max_kept or int(largest)  # None: as many rounds as the largest group
            args = (shifted[order[:num]], segment[:num], max_kept, thr, offset, cuda_rule)
            want = bn._greedy_rounds(*args)
            got = greedy_triton(*args)
            assert want.any() and torch.equal(got, want), f'{int(got.sum())} vs {int(want.sum())}'
        except Exception:  # noqa: BLE001  (report every failing case, not the first)
            failures.append(f'{case}: {traceback.format_exc(limit=3)}')
    end_to_end = 0
    for nms_cfg, max_per_img in ((dict(type='nms', iou_threshold=0.5), None),
                                 (dict(type='nms', iou_threshold=0.6, offset=1), 5),
                                 (dict(type='nms', iou_threshold=0.5, class_agnostic=True), 5)):
        end_to_end += 1
        try:
            for e, o, (_, s, _) in zip(per_image_mmcv(images, nms_cfg, max_per_img),
                                       run_ours(images, nms_cfg, max_per_img), images):
                assert_same_keep(o, e, s)
        except Exception:  # noqa: BLE001
            failures.append(f'{nms_cfg} {max_per_img}: {traceback.format_exc(limit=3)}')
    print(json.dumps({'kernel_cases': kernel_cases, 'end_to_end_cases': end_to_end,
                      'triton_calls': len(calls), 'failures': failures}))
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
