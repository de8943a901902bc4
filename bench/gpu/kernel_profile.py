"""Where the GPU time of stock's and our hot paths goes: launches, syncs and the top kernels.

For each case (focal loss forward + backward, a training step, inference at batch 1, also with
the GPU config and, on a GPU, the static-shape config's compiled head), one run
of stock and of ours is recorded with ``torch.profiler`` after warm-up runs, and reported as:
kernel launches issued by the host, host-device synchronisations (``*Synchronize`` calls: what
``item``, ``nonzero`` and copies to the CPU wait in), the GPU's busy time (sum of kernel
times), the wall time of the run, and the kernels that took the most GPU time. A GPU that is
busy for much less than the wall time waits for the host; launches and syncs say why.

Run on a GPU machine: ``python -m bench.gpu.kernel_profile OUT_DIR`` (``bench/gpu/run.sh``
does), which writes ``OUT_DIR/kernel_profile.txt``. ``--device cpu --tiny`` runs the same
machinery on a CPU (launch and sync counts are then 0: there is no CUDA).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

LAUNCHES = ('cudaLaunchKernel', 'cudaLaunchKernelExC', 'cuLaunchKernel', 'cuLaunchKernelEx')
TOP = 12


def device_us(event: object) -> float:
    """An averaged profiler event's own GPU time in microseconds (the field's name changed
    across torch versions)."""
    for field in ('self_device_time_total', 'self_cuda_time_total'):
        value = getattr(event, field, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_run(fn: Callable[[], object], device: torch.device, warmup: int = 3) -> str:
    """Profiles one run of ``fn`` after ``warmup`` runs; returns the report's lines."""
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    activities = [ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    syncs = sum(e.count for e in events if 'Synchronize' in e.key)
    memcpy = sum(e.count for e in events if e.key.startswith('cudaMemcpy'))
    # device-side events only (kernels, copies): no host time of their own; the ops that
    # launched them report the same device time again
    kernels = [e for e in events if device_us(e) > 0 and e.self_cpu_time_total == 0]
    busy_ms = sum(device_us(e) for e in kernels) / 1e3
    lines = [f'  wall {wall_ms:.2f} ms, GPU busy {busy_ms:.2f} ms, {launches} launches, '
             f'{syncs} syncs, {memcpy} memcpy calls']
    for e in sorted(kernels, key=device_us, reverse=True)[:TOP]:
        lines.append(f'    {device_us(e) / 1e3:8.3f} ms  x{e.count:<5d} {e.key[:90]}')
    return '\n'.join(lines)


def cases(bench: object) -> List[Tuple[str, Dict[str, Callable[[], object]]]]:
    """``[(case, {'stock': fn, 'ours': fn})]`` built on ``bench``'s models and sizes."""
    from mmdet.models.losses import FocalLoss
    from mmdet.registry import MODELS

    from bench.bench_focal_loss import fwd_bwd
    from bench.bench_train_step import make_batch, train_step
    from bench.gpu.side_by_side import focal_inputs, infer_step, pinned

    inp = focal_inputs(bench)
    out = [('focal loss fwd+bwd fp32', {
        'stock': fwd_bwd(FocalLoss(), inp, False),
        'ours': fwd_bwd(MODELS.build(dict(type='RetinaFocalLoss')), inp, False)})]
    batch, hw = bench.sizes.batch, bench.sizes.hw
    data = make_batch([hw] * batch, bench.sizes.train[1][1])
    amp = bench.device.type == 'cuda'
    out.append((f'train step, {batch} images (stock {"AMP fp16" if amp else "fp32"}, '
                f'ours: bf16 config)', {
                    'stock': train_step(bench.model('stock').train(), data,
                                        'float16' if amp else None),
                    'ours': train_step(bench.model('gpu-config').train(),
                                       pinned(data, bench.device),
                                       'bfloat16' if amp else None)}))
    out.append((f'train step fp32, {batch} images', {
        'stock': train_step(bench.model('stock').train(), data),
        'ours': train_step(bench.model('ours').train(), data)}))
    models = bench.eval_models()
    one = make_batch([hw])
    out.append(('inference fp32, batch 1', {
        'stock': infer_step(models['stock'], one), 'ours': infer_step(models['ours'], one)}))
    out.append(('inference fp32, batch 1 (ours: GPU config)', {
        'stock': infer_step(models['stock'], one),
        'ours': infer_step(models['gpu-config'], pinned(one, bench.device))}))
    if bench.device.type == 'cuda':  # CUDA graphs: the static config is profiled on a GPU only
        static = bench.model('static-config').eval()
        static.load_state_dict(models['stock'].state_dict(), strict=True)
        out.append(('inference fp32, batch 1 (ours: static config)', {
            'stock': infer_step(models['stock'], one),
            'ours': infer_step(static, pinned(one, bench.device))}))
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir', type=Path, help='folder for kernel_profile.txt')
    parser.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    parser.add_argument('--tiny', action='store_true', help='small sizes (the CPU smoke test)')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('no CUDA device; `--device cpu --tiny` runs the machinery on a CPU')
    import mmdet_retina_plugin  # noqa: F401  (registers our modules)
    from bench.gpu.side_by_side import FULL, TINY, Bench

    bench = Bench(torch.device(args.device), TINY if args.tiny else FULL, repeats=1, warmup=0)
    report = []
    for case, fns in cases(bench):
        for name, fn in fns.items():
            try:
                text = profile_run(fn, bench.device)
            except Exception as e:  # a failing side is a result, the other still runs
                text = f'  fails ({type(e).__name__}: {str(e)[:200]})'
            report.append(f'{case} -- {name}\n{text}')
            print(report[-1], flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / 'kernel_profile.txt'
    path.write_text('\n\n'.join(report) + '\n')
    print(f'-> {path}')
    return '\n\n'.join(report)


if __name__ == '__main__':
    main(sys.argv[1:])
