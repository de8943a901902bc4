"""The demo's ours-vs-stock comparison over several training seeds.

One demo run compares one training trajectory per detector. Ours and stock compute the same
function and start from the same weights under a seed, but their floating-point sums differ in
order, so the trajectories drift apart and the final mAPs differ by training noise. This tool
runs ``demo --compare`` once per seed and reports each side's mean and spread and the paired
difference (ours - stock), which is what tells "equal" from "worse".

Usage::

    python -m mmdet_retina_plugin.tools.demo_seeds [--seeds 0 1 2 3]
                                                    [--work-dir work_dirs/demo_seeds]

About 17 minutes per seed on 2 CPU cores. Writes ``<work-dir>/summary.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Dict, List, Optional, Sequence

from mmdet_retina_plugin.tools import demo

METRICS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')


def summarise(runs: Sequence[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Mean and sample standard deviation of each metric for ours, stock and ours - stock.

    Args:
        runs: one dict per seed, ``{'ours': {metric: value}, 'stock': {metric: value}}``.

    Returns:
        ``{metric: {'ours_mean', 'ours_std', 'stock_mean', 'stock_std', 'diff_mean',
        'diff_std', 'ours_not_below'}}``; stds are 0 for a single seed and ``ours_not_below``
        counts the seeds where ours >= stock.
    """
    out = {}
    for key in METRICS:
        ours = [r['ours'][key] for r in runs]
        stock = [r['stock'][key] for r in runs]
        diff = [a - b for a, b in zip(ours, stock)]
        std = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        out[key] = dict(ours_mean=statistics.fmean(ours), ours_std=std(ours),
                        stock_mean=statistics.fmean(stock), stock_std=std(stock),
                        diff_mean=statistics.fmean(diff), diff_std=std(diff),
                        ours_not_below=sum(d >= 0 for d in diff))
    return out


def format_table(seeds: Sequence[int], runs: Sequence[Dict[str, Dict[str, float]]],
                 stats: Dict[str, Dict[str, float]]) -> str:
    """Per-seed bbox mAP of both sides, then mean +- std of every metric."""
    lines = ['', '=' * 72, f'Demo, ours vs stock over {len(seeds)} seeds',
             'seed'.ljust(8) + 'ours mAP'.rjust(12) + 'stock mAP'.rjust(12)
             + 'ours - stock'.rjust(16)]
    for seed, run in zip(seeds, runs):
        a, b = run['ours']['bbox_mAP'], run['stock']['bbox_mAP']
        lines.append(f'{seed:<8d}{a:12.3f}{b:12.3f}{a - b:+16.3f}')
    lines.append('')
    lines.append('metric'.ljust(14) + 'ours'.rjust(16) + 'stock'.rjust(16)
                 + 'ours - stock'.rjust(18) + 'ours >= stock'.rjust(15))
    for key, s in stats.items():
        lines.append(key.ljust(14) + f'{s["ours_mean"]:.3f} +- {s["ours_std"]:.3f}'.rjust(16)
                     + f'{s["stock_mean"]:.3f} +- {s["stock_std"]:.3f}'.rjust(16)
                     + f'{s["diff_mean"]:+.3f} +- {s["diff_std"]:.3f}'.rjust(18)
                     + f'{s["ours_not_below"]}/{len(seeds)}'.rjust(15))
    lines.append('=' * 72)
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3])
    parser.add_argument('--work-dir', default='work_dirs/demo_seeds')
    parser.add_argument('--data-root', default=None)
    parser.add_argument('--quick', action='store_true',
                        help='a few iterations per seed on a tiny data set (a smoke test)')
    args = parser.parse_args(argv)

    runs: List[Dict[str, Dict[str, float]]] = []
    for seed in args.seeds:
        argv_one = ['--compare', '--seed', str(seed),
                    '--work-dir', os.path.join(args.work_dir, f'seed{seed}')]
        argv_one += ['--data-root', args.data_root] if args.data_root else []
        argv_one += ['--quick'] if args.quick else []
        summary = demo.main(argv_one)
        runs.append({r['name']: {k: r[k] for k in METRICS + ('train_s',)}
                     for r in summary['results']})
    stats = summarise(runs)
    print(format_table(args.seeds, runs, stats))
    result = dict(seeds=args.seeds, runs=runs, stats=stats, quick=args.quick,
                  cpu_count=os.cpu_count())
    demo.write_summary(args.work_dir, result)
    return result


if __name__ == '__main__':
    main()
