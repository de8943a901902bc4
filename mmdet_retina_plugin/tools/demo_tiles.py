"""Demo of tiled training: train on windows of large images, evaluate sliced against whole-image.

Steps:

1. generate large images of many small shapes (``LARGE_DATA``: 1500 x 2000 px, shapes of 10..40
   px, hundreds per image, many across window borders) unless they are already there;
2. ``mim train mmdet configs/tiles/retina-plugin_shapes-tiles.py``: ``RetinaTiledDataset``
   windows of 256 px;
3. evaluate the final checkpoint on the full val images twice with mmdet's ``CocoMetric``:
   sliced (``RetinaSlicedDetector``, the config as it is) and whole-image (the same weights as
   a plain ``RetinaNet`` whose test pipeline fits each image into 1333 x 800, as mmdet's
   configs do);
4. count duplicates among each one's detections (:func:`count_duplicates`);
5. draw one val image, sliced detections left and whole-image ones right;
6. print both mAPs, COCO's small-object mAP and the duplicates, and write them to
   ``<work-dir>/summary.json``.

Usage::

    python -m mmdet_retina_plugin.tools.demo_tiles [--work-dir work_dirs/demo_tiles] [--quick]

``--quick`` trains one epoch on one small image: it checks the plumbing, not the accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np

from mmdet_retina_plugin.tools.configs import config_root
from mmdet_retina_plugin.tools.demo import (
    _load_cfg,
    add_run_arguments,
    default_data_root,
    ensure_generated,
    train,
    write_summary,
)

CONFIG = config_root() / 'tiles' / 'retina-plugin_shapes-tiles.py'
# 6 train images give ~480 windows of 256 px (~120 iterations of 4 per epoch); 4 val images hold
# ~1200 shapes.
LARGE_DATA = dict(num_train=6, num_val=4, image_size=(1500, 2000), seed=0,
                  object_size=(10.0, 40.0), min_objects=250, max_objects=350, empty_prob=0.0)
# --quick: one 300 x 400 image per split (four 256 px windows), one epoch of two iterations.
QUICK_DATA = dict(num_train=1, num_val=1, image_size=(300, 400), seed=0,
                  object_size=(10.0, 40.0), min_objects=10, max_objects=20, empty_prob=0.0)
QUICK_OPTIONS = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                 'train_dataloader.batch_size=2', 'default_hooks.logger.interval=1',
                 'model.test_cfg.score_thr=0.0', 'custom_hooks.0.num_iters=1']
# mmdet's test-time size for COCO configs (long side <= 1333, short side <= 800).
WHOLE_IMAGE_SCALE = (1333, 800)
# The whole-image pass must not cap detections below the objects an image holds; CocoMetric
# counts up to 1000 per image.
WHOLE_IMAGE_MAX_PER_IMG = 1000
# Detections this confident or more are counted for duplicates and drawn.
SCORE_THR = 0.3
MATCH_IOU = 0.5


def data_options(data_root: str, workers: Optional[int] = None) -> List[str]:
    """``--cfg-options`` pointing the tiles config's loaders and evaluators at ``data_root``."""
    root = data_root.rstrip('/') + '/'
    opts = [f'train_dataloader.dataset.dataset.data_root={root}']
    opts += [f'{loader}.dataset.data_root={root}' for loader in ('val_dataloader',
                                                                  'test_dataloader')]
    opts += [f'{ev}.ann_file={root}annotations/val.json'
             for ev in ('val_evaluator', 'test_evaluator')]
    if workers == 0:  # worker processes cost more than they save on a tiny data set
        opts += [f'{loader}.{k}' for loader in ('train_dataloader', 'val_dataloader',
                                                 'test_dataloader')
                 for k in ('num_workers=0', 'persistent_workers=False')]
    return opts


def whole_image_cfg(cfg):
    """The tiles config turned into plain whole-image inference with the same weights.

    ``RetinaSlicedDetector`` becomes mmdet's ``RetinaNet`` (the same parameters), and the test
    pipeline's ``Resize`` fits each image into ``WHOLE_IMAGE_SCALE`` (keeping its ratio).
    """
    cfg.model.type = 'RetinaNet'
    cfg.model.pop('slice_cfg')
    cfg.model.test_cfg.max_per_img = WHOLE_IMAGE_MAX_PER_IMG
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.pipeline = [
            dict(type='Resize', scale=WHOLE_IMAGE_SCALE, keep_ratio=True)
            if step['type'] == 'Resize' else step for step in loader.dataset.pipeline]
    return cfg


def evaluate(cfg, checkpoint: str, work_dir: str, tag: str) -> Dict[str, object]:
    """``CocoMetric`` on the val images; detections are written to ``<work_dir>/<tag>.bbox.json``.

    Returns:
        Dict[str, object]: the metrics (``coco/bbox_mAP``, ``coco/bbox_mAP_s``, ...; all 0 when
        nothing is detected) and ``detections`` (the JSON's path).
    """
    from mmengine.runner import Runner

    cfg.work_dir = os.path.join(work_dir, tag)
    cfg.load_from = checkpoint
    cfg.visualizer.name = f'demo_tiles_{tag}_{time.time_ns()}'  # one global instance per name
    prefix = os.path.join(work_dir, tag)
    cfg.test_evaluator.outfile_prefix = prefix
    metrics = Runner.from_cfg(cfg).test()
    if not metrics:  # CocoMetric returns nothing without detections: by definition 0
        metrics = {f'coco/bbox_{k}': 0.0 for k in ('mAP', 'mAP_50', 'mAP_s', 'mAP_m', 'mAP_l')}
    detections = prefix + '.bbox.json'
    if not os.path.exists(detections):
        with open(detections, 'w') as f:
            json.dump([], f)
    return dict(metrics, detections=detections)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(4,)`` box with ``(N, 4)`` boxes, all ``x1, y1, x2, y2``; ``(N,)``."""
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def _xyxy(coco_boxes: Sequence[Sequence[float]]) -> np.ndarray:
    boxes = np.asarray(coco_boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)


def count_duplicates(ann_file: str, detections: str, score_thr: float = SCORE_THR,
                     iou_thr: float = MATCH_IOU) -> Dict[str, float]:
    """Duplicates among the detections scoring at least ``score_thr``.

    By descending score, each detection matches the ground-truth box of its class and image
    with the highest IoU (at least ``iou_thr``); it is a duplicate when that object was matched
    by a higher-scoring detection already (an object found twice, e.g. by two tiles that the
    merge did not unite).

    Args:
        ann_file (str): COCO annotations.
        detections (str): COCO results (``image_id``, ``category_id``, ``bbox``, ``score``).
        score_thr (float): detections scoring less are not counted.
        iou_thr (float): IoU that makes a detection find an object.

    Returns:
        Dict[str, float]: ``detections`` (counted), ``duplicates`` and ``percent``
        (``100 * duplicates / detections``, 0 without detections).
    """
    with open(ann_file) as f:
        gts = defaultdict(list)
        for ann in json.load(f)['annotations']:
            gts[ann['image_id'], ann['category_id']].append(ann['bbox'])
    with open(detections) as f:
        dets = sorted((d for d in json.load(f) if d['score'] >= score_thr),
                      key=lambda d: -d['score'])
    found = defaultdict(set)
    duplicates = 0
    for det in dets:
        key = (det['image_id'], det['category_id'])
        if not gts[key]:
            continue
        ious = _iou(_xyxy([det['bbox']])[0], _xyxy(gts[key]))
        best = int(ious.argmax())
        if ious[best] < iou_thr:
            continue
        duplicates += best in found[key]
        found[key].add(best)
    return dict(detections=len(dets), duplicates=duplicates,
                percent=100.0 * duplicates / len(dets) if dets else 0.0)


def draw_comparison(image_file: str, image_id: int, sliced: str, whole: str,
                    out_file: str, score_thr: float = SCORE_THR) -> str:
    """One image twice, side by side: sliced detections (left), whole-image ones (right).

    Detections scoring at least ``score_thr`` as green boxes; returns ``out_file`` (PNG).
    """
    import cv2

    image = cv2.imread(image_file)
    panels = []
    for detections, title in ((sliced, 'sliced'), (whole, 'whole image')):
        panel = image.copy()
        with open(detections) as f:
            boxes = [d['bbox'] for d in json.load(f)
                     if d['image_id'] == image_id and d['score'] >= score_thr]
        for x1, y1, x2, y2 in _xyxy(boxes).round().astype(int):
            cv2.rectangle(panel, (x1, y1), (x2, y2), (0, 255, 0), 1)
        cv2.putText(panel, f'{title}: {len(boxes)} boxes >= {score_thr}', (10, 30),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        panels.append(panel)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    if not cv2.imwrite(out_file, np.concatenate(panels, 1)):
        raise OSError(f'could not write {out_file}')
    return out_file


def format_summary(summary: Dict[str, object]) -> str:
    """The two evaluations side by side, and the targets."""
    sliced, whole = summary['sliced'], summary['whole']
    rows = [('bbox mAP (0.50:0.95)', 'bbox_mAP'), ('bbox mAP50', 'bbox_mAP_50'),
            ('bbox mAP small (< 32^2 px)', 'bbox_mAP_s')]
    lines = ['', '=' * 64, 'RetinaNet trained on tiles: sliced vs whole-image inference',
             ''.rjust(30) + 'sliced'.rjust(16) + 'whole image'.rjust(16)]
    lines += [label.ljust(30) + f'{sliced[key]:16.3f}{whole[key]:16.3f}' for label, key in rows]
    lines.append(f'duplicates (score >= {SCORE_THR})'.ljust(30)
                 + f"{sliced['duplicates_percent']:15.2f}%{whole['duplicates_percent']:15.2f}%")
    ratio = summary['small_ratio']
    lines.append('small-object mAP sliced / whole: '
                 + ('n/a' if ratio is None else f'{ratio:.2f}x') + ' (target >= 2)')
    lines.append(f"picture: {summary['picture']}")
    lines.append('=' * 64)
    return '\n'.join(lines)


def _result(metrics: Dict[str, object], duplicates: Dict[str, float]) -> Dict[str, object]:
    """One evaluation's summary: its mAPs, detections file and duplicate count."""
    return dict(bbox_mAP=float(metrics['coco/bbox_mAP']),
                bbox_mAP_50=float(metrics['coco/bbox_mAP_50']),
                bbox_mAP_s=float(metrics['coco/bbox_mAP_s']), detections=metrics['detections'],
                counted=duplicates['detections'], duplicates=duplicates['duplicates'],
                duplicates_percent=duplicates['percent'])


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_run_arguments(parser, 'work_dirs/demo_tiles', 'shapes_large',
                      'one epoch on one small image (a smoke test)')
    args = parser.parse_args(argv)

    start = time.perf_counter()
    data_root = ensure_generated(
        default_data_root(args.data_root, args.work_dir, args.quick, 'shapes_large'),
        QUICK_DATA if args.quick else LARGE_DATA)
    options = data_options(data_root, workers=0 if args.quick else None)
    options += QUICK_OPTIONS if args.quick else []
    checkpoint = train(CONFIG, os.path.join(args.work_dir, 'train'), options)
    train_s = time.perf_counter() - start

    ann_file = os.path.join(data_root, 'annotations', 'val.json')
    results = {}
    for tag in ('sliced', 'whole'):
        cfg = _load_cfg(CONFIG, args.work_dir, options)
        cfg = whole_image_cfg(cfg) if tag == 'whole' else cfg
        metrics = evaluate(cfg, checkpoint, args.work_dir, tag)
        results[tag] = _result(metrics, count_duplicates(ann_file, metrics['detections']))
    with open(ann_file) as f:
        first = json.load(f)['images'][0]
    picture = draw_comparison(os.path.join(data_root, 'val', first['file_name']), first['id'],
                              results['sliced']['detections'], results['whole']['detections'],
                              os.path.join(args.work_dir, 'pictures', 'sliced_vs_whole.png'))
    whole_s = results['whole']['bbox_mAP_s']
    summary = dict(results, checkpoint=checkpoint, picture=picture, quick=args.quick,
                   data_root=data_root, train_s=round(train_s, 1),
                   # None: the whole-image pass found no small object (or COCO saw none)
                   small_ratio=results['sliced']['bbox_mAP_s'] / whole_s if whole_s > 0
                   else None,
                   total_s=round(time.perf_counter() - start, 1), cpu_count=os.cpu_count())
    print(format_summary(summary))
    write_summary(args.work_dir, summary)
    return summary


if __name__ == '__main__':
    main()
