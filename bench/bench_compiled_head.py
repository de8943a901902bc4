"""Compiled head benchmark: mmdet's RetinaHead vs our RetinaNetHead, eager and compiled whole
(``compile_cfg``, ``static_num_gts``), same weights, same pyramid features.

Cases (R50 RetinaNet's head on 256-channel pyramid features, COCO's 80 classes):

* ``predict``: ``head.predict`` (both subnets, candidate selection, NMS), one 800x1216 image,
  class scores spread so that post-processing has work (``bench/retinanet_r50.py``);
* ``loss+backward``: ``head.loss`` (both subnets, targets, losses) and the backward pass into the
  features and weights, two 512x768 images (the head's convolutions dominate a CPU's time at
  full size), 8 gts per image.

Each row times stock against one of ours (eager, then compiled), alternated run by run, and
counts the ATen operators one call issues from Python (top level, as the profiler records them):
on a GPU each is at least one kernel launch, which is what binds the host at small batches; a
compiled region runs its fused kernels (C++ on the CPU, Triton on a GPU) outside that count,
and with ``mode='reduce-overhead'`` on a GPU replays them all as one CUDA graph. Compile time is
the first compiled call's.

Run: ``python -m bench.bench_compiled_head [--device cuda] [--mode reduce-overhead]``.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from torch.profiler import ProfilerActivity, profile

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.bench_head import NUM_CLASSES, STRIDES, build_heads
from bench.harness import measure_pair, report
from bench.retinanet_r50 import spread_scores
from mmdet_retina_plugin.utils.compiling import Compiler, check_compile_cfg

PREDICT_HW = (800, 1216)
LOSS_HW = (512, 768)
STATIC_GTS = 100


def features(batch: int, hw: Tuple[int, int], device: torch.device,
             seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Random ``(batch, 256, Hi, Wi)`` pyramid maps of ``hw`` images, strides 8..128."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, 256, math.ceil(hw[0] / s), math.ceil(hw[1] / s),
                             generator=g).to(device) for s in STRIDES)


def samples(batch: int, hw: Tuple[int, int], num_gts: int, device: torch.device,
            seed: int = 0) -> List[DetDataSample]:
    """``batch`` data samples of ``hw`` images with ``num_gts`` random boxes each."""
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        sample = DetDataSample(metainfo=dict(img_shape=hw, pad_shape=hw, batch_input_shape=hw,
                                             ori_shape=hw, scale_factor=(1.0, 1.0)))
        size = torch.tensor([hw[1], hw[0]])
        xy = torch.rand(num_gts, 2, generator=g) * size * 0.8
        wh = (torch.rand(num_gts, 2, generator=g) * 0.3 + 0.02) * size
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, NUM_CLASSES, (num_gts,), generator=g)).to(device)
        out.append(sample)
    return out


def top_level_ops(fn: Callable[[], object]) -> int:
    """ATen operators one call of ``fn`` issues from Python (not those inside other ops)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    count = 0
    for event in prof.events():
        if not event.name.startswith('aten::'):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith('aten::'):
            parent = parent.cpu_parent
        count += parent is None
    return count


def predict_call(head: torch.nn.Module, feats: Tuple[torch.Tensor, ...],
                 data: List[DetDataSample]) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return head.predict(feats, data)
    return run


def loss_call(head: torch.nn.Module, feats: Tuple[torch.Tensor, ...],
              data: List[DetDataSample]) -> Callable[[], None]:
    def run() -> None:
        leaves = [f.detach().requires_grad_() for f in feats]
        losses = head.loss(leaves, data)
        sum(sum(v) for v in losses.values()).backward()
        head.zero_grad(set_to_none=True)
    return run


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--mode', default=None,
                        help="torch.compile mode of the compiled head (e.g. 'reduce-overhead')")
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args(argv)
    register_all_modules()
    device = torch.device(args.device)
    torch.manual_seed(0)
    stock, eager = build_heads()
    spread_scores(stock)
    eager.load_state_dict(stock.state_dict(), strict=True)
    eager.static_num_gts = STATIC_GTS  # as the compiled head, so only compiling differs
    compiled = copy.deepcopy(eager)
    compiled.dense_compiler = Compiler(check_compile_cfg(dict(mode=args.mode)))
    heads = {name: h.to(device) for name, h in
             (('stock', stock), ('eager', eager), ('compiled', compiled))}

    rows: List[Dict[str, object]] = []
    notes = [f'{device}, torch threads={torch.get_num_threads()}, compile mode={args.mode}']
    cases = (('predict 1x800x1216', predict_call, features(1, PREDICT_HW, device),
              samples(1, PREDICT_HW, 0, device), 'eval'),
             ('loss+backward 2x512x768, 8 gts/img', loss_call, features(2, LOSS_HW, device),
              samples(2, LOSS_HW, 8, device), 'train'))
    for case, call, feats, data, mode in cases:
        fns = {name: call(getattr(h, mode)(), feats, data) for name, h in heads.items()}
        start = time.perf_counter()
        fns['compiled']()
        notes.append(f'{case}: first compiled call (compiling) {time.perf_counter() - start:.1f} '
                     f's; fell back to eager: {compiled.dense_compiler.failed}')
        fns['stock'](), fns['eager']()  # warm too: first calls fill caches and compile kernels
        ops = {name: top_level_ops(fn) for name, fn in fns.items()}
        notes.append(f'{case}: top-level ATen ops per call: stock {ops["stock"]}, ours eager '
                     f'{ops["eager"]}, ours compiled {ops["compiled"]}')
        for name in ('eager', 'compiled'):
            rows.append({'case': f'{case}, ours {name}',
                         **measure_pair(fns['stock'], fns[name], args.repeats, device=device)})
    report('bench_compiled_head', rows, notes=notes)


if __name__ == '__main__':
    main()
