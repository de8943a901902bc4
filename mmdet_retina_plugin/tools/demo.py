"""The project's demo: train RetinaNet on synthetic shapes, evaluate, draw, plot, summarise.

Steps, for the plugin's detector (default), mmdet's stock one (``--stock``) or both
(``--compare``):

1. generate the data set (:mod:`mmdet_retina_plugin.datasets.synthetic_shapes`) unless a copy made
   with the same arguments is already there;
2. ``mim train mmdet configs/demo/<config>`` in a subprocess, so mmengine's log (with ETA) shows;
3. evaluate the final checkpoint on the val split with mmdet's ``CocoMetric`` (pycocotools);
4. draw ground truth (left) and detections (right) on a few val images with ``DetLocalVisualizer``;
5. plot training loss and val mAP against iteration from mmengine's ``scalars.json``;
6. print a summary (bbox mAP, mAP50, wall time, where the pictures are) and write it to
   ``<work-dir>/summary.json``.

Usage::

    python -m mmdet_retina_plugin.tools.demo [--stock | --compare] [--work-dir work_dirs/demo]
                                              [--seed N] [--quick]

``--quick`` trains a few iterations on a tiny data set: it checks the plumbing, not the accuracy.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mmdet_retina_plugin.datasets.synthetic_shapes import META_FILE, dataset_meta, make_dataset
from mmdet_retina_plugin.tools.configs import config_root

CONFIG_DIR = config_root() / 'demo'
# ours: our modules as we recommend them; parity: our modules with mmdet's exact settings;
# stock: mmdet's modules. All three share everything else.
CONFIGS = {'ours': CONFIG_DIR / 'retinanet_shapes.py',
           'parity': CONFIG_DIR / 'retinanet_shapes_parity.py',
           'stock': CONFIG_DIR / 'retinanet_shapes_stock.py'}

# The data set the configs are tuned for, and a tiny one for --quick.
# 160 px keeps an iteration short on 2 CPU cores (the demo's times: README, "The demo");
# shapes up to 112 px still give COCO's large range (box area >= 96^2).
FULL_DATA = dict(num_train=1000, num_val=500, image_size=(160, 160), seed=0,
                 object_size=(10.0, 112.0))
QUICK_DATA = dict(num_train=16, num_val=8, image_size=(128, 128), seed=0)
# --quick: two epochs of four iterations, validating after each, so the plot has two points;
# an untrained head scores every box near its prior, so keep all boxes for CocoMetric to rank;
# precise BN (custom_hooks[0]) over 4 batches instead of 200, which would outlast the training.
QUICK_OPTIONS = ['train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
                 'train_dataloader.batch_size=4', 'default_hooks.logger.interval=1',
                 'model.test_cfg.score_thr=0.0', 'custom_hooks.0.num_iters=4']
_LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

NUM_DRAWN = 6
DRAW_SCORE_THR = 0.3


def ensure_dataset(root: str, quick: bool) -> str:
    """Generates the data set under ``root`` unless ``root/meta.json`` shows it is already there.

    Args:
        root (str): the data set's folder.
        quick (bool): the tiny ``--quick`` data set instead of the full one.

    Returns:
        str: ``root`` as an absolute path.
    """
    return ensure_generated(root, QUICK_DATA if quick else FULL_DATA)


def ensure_generated(root: str, spec: Dict[str, object]) -> str:
    """Generates the data set ``make_dataset(root, **spec)`` unless ``root/meta.json`` shows it
    is already there; returns ``root`` as an absolute path."""
    root = os.path.abspath(root)
    meta_path = os.path.join(root, META_FILE)
    wanted = dataset_meta(**spec)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in wanted} == wanted:
            print(f'[demo] reusing the data set in {root}')
            return root
    print(f'[demo] generating the data set in {root} ...')
    make_dataset(root=root, **spec)
    return root


def default_data_root(data_root: Optional[str], work_dir: str, quick: bool, name: str) -> str:
    """``data_root`` if given, else ``data/<name>`` (``<work_dir>/<name>_quick`` for the tiny
    ``--quick`` data set)."""
    if data_root:
        return data_root
    return os.path.join(work_dir, f'{name}_quick') if quick else os.path.join('data', name)


def prepare_data_root(data_root: Optional[str], work_dir: str, quick: bool) -> str:
    """:func:`default_data_root` of the shapes data set, generated there if missing
    (:func:`ensure_dataset`)."""
    return ensure_dataset(default_data_root(data_root, work_dir, quick, 'shapes'), quick)


def add_run_arguments(parser: argparse.ArgumentParser, work_dir: str, data_name: str,
                      quick_help: str) -> None:
    """``--work-dir``, ``--data-root`` and ``--quick``, as every demo command takes them.

    Args:
        parser (argparse.ArgumentParser): the command's parser.
        work_dir (str): the default ``--work-dir``.
        data_name (str): the data set's folder name (see :func:`default_data_root`).
        quick_help (str): what ``--quick`` runs instead.
    """
    parser.add_argument('--work-dir', default=work_dir)
    parser.add_argument('--data-root', default=None,
                        help=f'data set directory (default: data/{data_name}, or '
                             f'<work-dir>/{data_name}_quick with --quick)')
    parser.add_argument('--quick', action='store_true', help=quick_help)


def data_options(data_root: str, workers: Optional[int] = None) -> List[str]:
    """``--cfg-options`` pointing every loader and evaluator of a demo config at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    opts = [f'{loader}.dataset.data_root={root}' for loader in _LOADERS]
    opts += [f'{ev}.ann_file={root}annotations/val.json'
             for ev in ('val_evaluator', 'test_evaluator')]
    if workers == 0:  # worker processes cost more than they save on a tiny data set
        opts += [f'{loader}.{k}' for loader in _LOADERS
                 for k in ('num_workers=0', 'persistent_workers=False')]
    return opts


def train(config: Path, work_dir: str, options: Sequence[str]) -> str:
    """Runs ``mim train mmdet`` in a subprocess; returns the last checkpoint's path."""
    cmd = [sys.executable, '-m', 'mim', 'train', 'mmdet', str(config), '--work-dir', work_dir,
           '--cfg-options', *options]
    print('[demo] $ ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _load_cfg(config: Path, work_dir: str, options: Sequence[str]):
    from mmengine.config import Config, DictAction

    cfg = Config.fromfile(str(config))
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *options]).cfg_options)
    cfg.work_dir = work_dir
    return cfg


def evaluate_and_draw(config: Path, checkpoint: str, work_dir: str, options: Sequence[str],
                      tag: str) -> Dict[str, object]:
    """COCO bbox evaluation of ``checkpoint`` on val, then drawings of the first val images
    that hold objects (ground truth left, detections with score >= ``DRAW_SCORE_THR`` right).

    Args:
        config (Path): the demo config.
        checkpoint (str): the trained weights.
        work_dir (str): the run's folder; results go to ``test/`` and ``detections/`` in it.
        options (Sequence[str]): ``--cfg-options`` of the training run.
        tag (str): the detector's name in ``CONFIGS``.

    Returns:
        Dict[str, object]: the ``CocoMetric`` results (``coco/bbox_mAP``,
        ``coco/bbox_mAP_50``, ...) and ``pictures`` (list of PNG paths).
    """
    import mmcv
    import torch
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner

    cfg = _load_cfg(config, os.path.join(work_dir, 'test'), options)
    cfg.load_from = checkpoint
    # A fresh visualizer name per run: mmengine keeps one global instance per name.
    cfg.visualizer.name = f'demo_{tag}_{time.time_ns()}'
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    if not metrics:
        # CocoMetric returns nothing when no box passes score_thr; by definition that scores 0.
        print('[demo] no detections on val: every mAP is 0')
        metrics = {f'coco/bbox_{k}': 0.0 for k in ('mAP', 'mAP_50', 'mAP_s', 'mAP_m', 'mAP_l')}

    dataset = runner.test_dataloader.dataset
    drawer = DetLocalVisualizer(name=f'demo_draw_{tag}_{time.time_ns()}')
    drawer.dataset_meta = dataset.metainfo
    out_dir = os.path.join(work_dir, 'detections')
    os.makedirs(out_dir, exist_ok=True)
    pictures = []
    runner.model.eval()
    for idx in range(len(dataset)):
        if len(pictures) == NUM_DRAWN:
            break
        if not dataset.get_data_info(idx)['instances']:
            continue
        with torch.no_grad():
            sample = runner.model.test_step(pseudo_collate([dataset[idx]]))[0]
        img = mmcv.imread(sample.img_path, channel_order='rgb')
        out_file = os.path.join(out_dir, os.path.basename(sample.img_path))
        drawer.add_datasample(os.path.basename(sample.img_path), img, data_sample=sample,
                              draw_gt=True, show=False, pred_score_thr=DRAW_SCORE_THR,
                              out_file=out_file)
        pictures.append(out_file)
    return dict(metrics, pictures=pictures)


def read_scalars(train_dir: str) -> List[Dict[str, float]]:
    """Records of the latest training run's ``<timestamp>/vis_data/scalars.json``."""
    runs = sorted(glob.glob(os.path.join(train_dir, '*', 'vis_data', 'scalars.json')))
    if not runs:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {train_dir}')
    with open(runs[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: Sequence[Dict[str, float]], out_file: str, title: str) -> str:
    """Training loss (left) and val bbox mAP / mAP50 (right) against iteration, as a PNG.

    ``records`` are mmengine scalar records: training ones hold ``loss`` and validation ones
    ``coco/bbox_mAP``; both carry ``step`` = iteration (the configs log metrics by iteration).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train_recs = [r for r in records if 'loss' in r]
    val_recs = [r for r in records if 'coco/bbox_mAP' in r]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ('loss', 'loss_cls', 'loss_bbox'):
        ax_loss.plot([r['step'] for r in train_recs], [r[key] for r in train_recs], label=key)
    ax_loss.set(xlabel='iteration', ylabel='training loss', title='training loss')
    ax_loss.legend()
    for key, label in (('coco/bbox_mAP', 'bbox mAP (0.50:0.95)'), ('coco/bbox_mAP_50', 'mAP50')):
        ax_map.plot([r['step'] for r in val_recs], [r[key] for r in val_recs], 'o-', label=label)
    ax_map.set(xlabel='iteration', ylabel='mAP', title='validation', ylim=(0, 1))
    ax_map.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_file, dpi=100)
    plt.close(fig)
    return out_file


def run_one(tag: str, work_dir: str, data_root: str, quick: bool,
            seed: Optional[int] = None) -> Dict[str, object]:
    """Train, evaluate, draw and plot one detector (``tag`` in ``CONFIGS``) into ``work_dir``;
    ``seed`` replaces the config's ``randomness.seed`` (initial weights, data order, flips)."""
    start = time.perf_counter()
    options = data_options(data_root, workers=0 if quick else None)
    options += QUICK_OPTIONS if quick else []
    options += [] if seed is None else [f'randomness.seed={seed}']
    train_dir = os.path.join(work_dir, 'train')
    checkpoint = train(CONFIGS[tag], train_dir, options)
    train_s = time.perf_counter() - start
    result = evaluate_and_draw(CONFIGS[tag], checkpoint, work_dir, options, tag)
    plot = plot_curves(read_scalars(train_dir), os.path.join(work_dir, 'curves.png'),
                       f'RetinaNet ({tag}) on synthetic shapes')
    return dict(name=tag, config=str(CONFIGS[tag]), checkpoint=checkpoint, seed=seed,
                bbox_mAP=float(result['coco/bbox_mAP']),
                bbox_mAP_50=float(result['coco/bbox_mAP_50']),
                bbox_mAP_s=float(result['coco/bbox_mAP_s']),
                bbox_mAP_m=float(result['coco/bbox_mAP_m']),
                bbox_mAP_l=float(result['coco/bbox_mAP_l']),
                train_s=round(train_s, 1), wall_s=round(time.perf_counter() - start, 1),
                pictures=result['pictures'], plot=plot)


def format_summary(results: Sequence[Dict[str, object]], total_s: float) -> str:
    """A table of the results (one column per detector) and where their pictures are."""
    rows = [('bbox mAP (0.50:0.95)', 'bbox_mAP', '{:.3f}'),
            ('bbox mAP50', 'bbox_mAP_50', '{:.3f}'), ('mAP small / medium / large', None, None),
            ('train wall time (s)', 'train_s', '{:.0f}'), ('run wall time (s)', 'wall_s', '{:.0f}')]
    width = 28
    lines = ['', '=' * 60, 'RetinaNet on synthetic shapes: summary',
             ''.ljust(width) + ''.join(str(r['name']).rjust(18) for r in results)]
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{r['bbox_mAP_s']:.2f}/{r['bbox_mAP_m']:.2f}/{r['bbox_mAP_l']:.2f}"
                     for r in results]
        else:
            cells = [fmt.format(r[key]) for r in results]
        lines.append(label.ljust(width) + ''.join(c.rjust(18) for c in cells))
    lines.append('total wall time (s)'.ljust(width) + f'{total_s:.0f}'.rjust(18))
    for r in results:
        lines += [f'[{r["name"]}] detections: {os.path.dirname(r["pictures"][0])}'
                  if r['pictures'] else f'[{r["name"]}] detections: none drawn',
                  f'[{r["name"]}] curves:     {r["plot"]}']
    lines.append('=' * 60)
    return '\n'.join(lines)


def write_summary(work_dir: str, summary: Dict[str, object]) -> str:
    """Writes ``summary`` to ``<work_dir>/summary.json``; returns the path."""
    os.makedirs(work_dir, exist_ok=True)
    path = os.path.join(work_dir, 'summary.json')
    with open(path, 'w') as f:
        json.dump(summary, f, indent=1)
    return path


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--stock', action='store_true', help="mmdet's stock modules only")
    mode.add_argument('--compare', action='store_true', help='the plugin and stock, side by side')
    add_run_arguments(parser, 'work_dirs/demo', 'shapes',
                      'a few iterations on a tiny data set (a smoke test)')
    parser.add_argument('--seed', type=int, default=None,
                        help="training seed (default: the config's, 0); both detectors of "
                             '--compare start from the same weights under one seed')
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data_root = prepare_data_root(args.data_root, args.work_dir, args.quick)
    tags = ['ours', 'stock'] if args.compare else ['stock'] if args.stock else ['ours']
    results = [run_one(tag, os.path.join(args.work_dir, tag) if args.compare else args.work_dir,
                       data_root, args.quick, args.seed) for tag in tags]
    total_s = time.perf_counter() - start
    print(format_summary(results, total_s))
    summary = dict(results=results, total_s=round(total_s, 1), quick=args.quick,
                   data_root=data_root, cpu_count=os.cpu_count())
    write_summary(args.work_dir, summary)
    return summary


if __name__ == '__main__':
    main()
