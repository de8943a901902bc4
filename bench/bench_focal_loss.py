"""RetinaFocalLoss vs mmdet's FocalLoss at full RetinaNet size, side by side in one process.

Case: 2 images x 201,600 anchors x 80 classes (``pred (403200, 80)`` fp32), integer labels
with ~1 % positives, ``avg_factor`` = number of positives (what ``AnchorHead`` passes).
Also times ``pred.clone()``: one read + one write of the logits, the memory-traffic floor.

Run from the repo root: ``python -m bench.bench_focal_loss`` or
``python bench/bench_focal_loss.py``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

if __package__ in (None, ''):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdet.models.losses import FocalLoss  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402

import mmdet_retina_plugin  # noqa: E402,F401  (registers RetinaFocalLoss)
from bench.harness import measure, measure_pair, report  # noqa: E402

NUM_ANCHORS = 2 * 201_600
NUM_CLASSES = 80
POS_FRACTION = 0.01


def make_inputs(seed: int = 0, device: str = 'cpu') -> Dict[str, object]:
    """Logits ``(N, K)`` fp32, labels ``(N,)`` (``K`` = background), ones label weights."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(NUM_ANCHORS, NUM_CLASSES, generator=g) * 2 - 4
    labels = torch.full((NUM_ANCHORS,), NUM_CLASSES, dtype=torch.long)
    pos = torch.rand(NUM_ANCHORS, generator=g) < POS_FRACTION
    labels[pos] = torch.randint(0, NUM_CLASSES, (int(pos.sum()),), generator=g)
    return dict(pred=pred.to(device), labels=labels.to(device),
                weight=torch.ones(NUM_ANCHORS, device=device), avg_factor=float(pos.sum()))


def fwd_bwd(loss: torch.nn.Module, inp: Dict[str, object], weighted: bool) -> Callable[[], None]:
    def run() -> None:
        p = inp['pred'].detach().requires_grad_()
        loss(p, inp['labels'], inp['weight'] if weighted else None,
             avg_factor=inp['avg_factor']).backward()
    return run


def fwd(loss: torch.nn.Module, inp: Dict[str, object]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            loss(inp['pred'], inp['labels'], avg_factor=inp['avg_factor'])
    return run


def check_parity(ours: torch.nn.Module, stock: torch.nn.Module, inp: Dict[str, object]) -> str:
    """Loss and gradient of ours vs stock on the benchmark input (also warms up compiling)."""
    out = []
    for m in (ours, stock):
        p = inp['pred'].detach().requires_grad_()
        t0 = time.perf_counter()
        loss = m(p, inp['labels'], inp['weight'], avg_factor=inp['avg_factor'])
        loss.backward()
        out.append((loss.detach(), p.grad, time.perf_counter() - t0))
    (lo, go, t_first), (ls, gs, _) = out
    rel = ((lo - ls).abs() / ls.abs()).item()
    grad_err = ((go - gs).abs().max() / gs.abs().max()).item()
    if rel > 1e-5 or grad_err > 1e-4:
        raise AssertionError(f'parity failed: loss rel {rel:.2e}, grad rel {grad_err:.2e}')
    return (f'parity vs stock: loss rel err {rel:.1e}, grad max err / max|grad| {grad_err:.1e}; '
            f'first ours call (incl. compile) {t_first:.1f} s')


def main(repeats: int = 5) -> List[Dict[str, object]]:
    # CUDA when present: stock FocalLoss then runs mmcv's CUDA sigmoid_focal_loss, ours Triton
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    inp = make_inputs(device=device)
    ours = MODELS.build(dict(type='RetinaFocalLoss'))
    ours_eager = MODELS.build(dict(type='RetinaFocalLoss', compile_min_numel=None))
    stock = FocalLoss()
    notes = [check_parity(ours, stock, inp)]
    fwd(ours, inp)()  # compile the forward-only kernel outside the timings
    clone = measure(lambda: inp['pred'].clone(), repeats=repeats, device=device)

    def pair(stock_fn: Callable[[], None], ours_fn: Callable[[], None]) -> Dict[str, object]:
        return measure_pair(stock_fn, ours_fn, repeats, device=device)

    rows = [
        dict(case='fwd+bwd 2x201600x80 (no weight)',
             **pair(fwd_bwd(stock, inp, False), fwd_bwd(ours, inp, False))),
        # the fallback when compiling is off or fails (on CUDA: Triton either way)
        dict(case='fwd+bwd, ours eager (compile off)',
             **pair(fwd_bwd(stock, inp, False), fwd_bwd(ours_eager, inp, False))),
        dict(case='fwd+bwd 2x201600x80 (label weights)',
             **pair(fwd_bwd(stock, inp, True), fwd_bwd(ours, inp, True))),
        dict(case='fwd only (no_grad) 2x201600x80', **pair(fwd(stock, inp), fwd(ours, inp))),
    ]
    if device == 'cuda':
        # mmcv's CUDA op rejects bf16; ours computes in fp32 from bf16 logits
        bf16 = dict(inp, pred=inp['pred'].bfloat16())
        rows.append(dict(case='fwd+bwd bf16 logits (stock: fp32)',
                         **pair(fwd_bwd(stock, inp, False), fwd_bwd(ours, bf16, False))))
    notes.append(f'pred.clone() {clone["median_s"]:.4f} s (memory-traffic floor)')
    for r in rows:
        r['ours_over_clone'] = r['ours']['median_s'] / clone['median_s']
        r['mem_ours_over_stock'] = r['ours']['peak_extra_mib'] / r['stock']['peak_extra_mib']
        notes.append(f'{r["case"]}: ours/clone time {r["ours_over_clone"]:.2f}x, '
                     f'ours/stock peak memory {r["mem_ours_over_stock"]:.3f}')
    report('focal_loss', rows, notes)
    return rows


if __name__ == '__main__':
    main()
