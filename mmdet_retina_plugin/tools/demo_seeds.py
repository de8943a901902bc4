"""The demo's comparison with stock mmdet over several training seeds.

One demo run compares one training trajectory per detector. ``parity`` (our modules, mmdet's
settings) and ``stock`` compute the same function and start from the same weights under a seed,
but their floating-point sums differ in order, so the trajectories drift apart and the final mAPs
differ by training noise. This tool trains each detector once per seed and reports each one's
mean and spread and the paired difference to stock, which is what tells "equal" from "worse".

Usage::

    python -m mmdet_retina_plugin.tools.demo_seeds [--seeds 0 1 2 3]
                                                    [--detectors ours parity stock]
                                                    [--work-dir work_dirs/demo_seeds]

About 8.5 minutes per detector and seed on 2 CPU cores. Writes ``<work-dir>/summary.json``
after every seed, so an interrupted study keeps what it finished.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Dict, List, Optional, Sequence

from mmdet_retina_plugin.tools import demo

METRICS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
REFERENCE = 'stock'


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: Sequence[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, dict]]:
    """Mean and sample standard deviation of each metric per detector, and of its paired
    difference to ``stock``.

    Args:
        runs (Sequence[Dict[str, Dict[str, float]]]): one dict per seed,
            ``{detector: {metric: value}}``; every seed has the same detectors.

    Returns:
        Dict[str, Dict[str, dict]]: ``{detector: {metric: {'mean', 'std'[, 'diff_mean',
        'diff_std', 'not_below']}}}``; the ``diff_*`` entries (detector - stock) and
        ``not_below`` (seeds where detector >= stock) exist for detectors other than stock when
        stock ran. Stds are 0 for a single seed.
    """
    out: Dict[str, Dict[str, dict]] = {}
    for name in runs[0]:
        out[name] = {}
        for key in METRICS:
            values = [r[name][key] for r in runs]
            entry = dict(mean=statistics.fmean(values), std=_std(values))
            if name != REFERENCE and REFERENCE in runs[0]:
                diff = [v - r[REFERENCE][key] for v, r in zip(values, runs)]
                entry.update(diff_mean=statistics.fmean(diff), diff_std=_std(diff),
                             not_below=sum(d >= 0 for d in diff))
            out[name][key] = entry
    return out


def format_table(seeds: Sequence[int], runs: Sequence[Dict[str, Dict[str, float]]],
                 stats: Dict[str, Dict[str, dict]]) -> str:
    """Per-seed bbox mAP of every detector, then mean +- std and the difference to stock."""
    names = list(runs[0])
    lines = ['', '=' * 72, f'Demo over {len(seeds)} seeds: bbox mAP (COCO 0.50:0.95)',
             'seed'.ljust(8) + ''.join(n.rjust(12) for n in names)]
    for seed, run in zip(seeds, runs):
        lines.append(f'{seed:<8d}' + ''.join(f'{run[n]["bbox_mAP"]:12.3f}' for n in names))
    lines += ['', 'detector'.ljust(10) + 'metric'.ljust(14) + 'mean +- std'.rjust(16)
              + f'- {REFERENCE}'.rjust(18) + f'>= {REFERENCE}'.rjust(12)]
    for name in names:
        for key, s in stats[name].items():
            line = name.ljust(10) + key.ljust(14) + f'{s["mean"]:.3f} +- {s["std"]:.3f}'.rjust(16)
            if 'diff_mean' in s:
                line += (f'{s["diff_mean"]:+.3f} +- {s["diff_std"]:.3f}'.rjust(18)
                         + f'{s["not_below"]}/{len(seeds)}'.rjust(12))
            lines.append(line)
    lines.append('=' * 72)
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3])
    parser.add_argument('--detectors', nargs='+', choices=list(demo.CONFIGS),
                        default=list(demo.CONFIGS))
    demo.add_run_arguments(parser, 'work_dirs/demo_seeds', 'shapes',
                           'a few iterations per seed on a tiny data set (a smoke test)')
    args = parser.parse_args(argv)

    data_root = demo.prepare_data_root(args.data_root, args.work_dir, args.quick)
    runs: List[Dict[str, Dict[str, float]]] = []
    for seed in args.seeds:
        run = {}
        for name in args.detectors:
            result = demo.run_one(name, os.path.join(args.work_dir, f'seed{seed}', name),
                                  data_root, args.quick, seed)
            run[name] = {k: result[k] for k in METRICS + ('train_s',)}
        runs.append(run)
        stats = summarise(runs)
        summary = dict(seeds=args.seeds[:len(runs)], runs=runs, stats=stats, quick=args.quick,
                       data_root=data_root, cpu_count=os.cpu_count())
        demo.write_summary(args.work_dir, summary)
        print(format_table(args.seeds[:len(runs)], runs, stats), flush=True)
    return summary


if __name__ == '__main__':
    main()
