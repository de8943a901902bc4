"""The demo driver end to end in --quick mode (a few iterations on a tiny data set)."""
import json
import os
import subprocess
import sys

import cv2
from mmengine.config import Config

from mmdet_retina_plugin.datasets.synthetic_shapes import META_FILE
from mmdet_retina_plugin.tools import demo


def _env():
    # One thread per process: the suite shares its cores, and oversubscribed OpenMP threads
    # slow CPU training down several-fold.
    return dict(os.environ, OMP_NUM_THREADS='1')


def test_quick_demo_writes_every_artefact(tmp_path):
    work = tmp_path / 'demo'
    proc = subprocess.run([sys.executable, '-m', 'mmdet_retina_plugin.tools.demo', '--quick',
                           '--work-dir', str(work)], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # mmengine's training log (with its ETA) went through to the user
    assert 'Epoch(train)' in proc.stdout + proc.stderr and 'eta:' in proc.stdout + proc.stderr
    assert 'bbox mAP (0.50:0.95)' in proc.stdout

    summary = json.load(open(work / 'summary.json'))
    (result,) = summary['results']
    assert result['name'] == 'ours' and summary['quick'] is True
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l'):
        # COCOeval reports -1 for a size range without ground truth
        assert result[key] == -1 or 0.0 <= result[key] <= 1.0, key
    assert 0.0 <= result['bbox_mAP'] <= 1.0
    assert os.path.isfile(result['checkpoint'])

    # ground truth (left) beside detections (right) on each val image that holds shapes
    assert 1 <= len(result['pictures']) <= demo.NUM_DRAWN
    for path in result['pictures']:
        drawn = cv2.imread(path)
        assert drawn is not None and drawn.shape[:2] == (128, 256)
    curves = cv2.imread(result['plot'])
    assert curves is not None and curves.shape[0] > 100 and curves.shape[1] > 100


def test_plot_curves_from_scalar_records(tmp_path):
    records = [dict(step=i, loss=2.0 / i, loss_cls=1.0 / i, loss_bbox=1.0 / i)
               for i in range(1, 9)]
    records += [{'step': 4, 'coco/bbox_mAP': 0.2, 'coco/bbox_mAP_50': 0.4},
                {'step': 8, 'coco/bbox_mAP': 0.5, 'coco/bbox_mAP_50': 0.8}]
    run = tmp_path / '20260101_000000' / 'vis_data'
    run.mkdir(parents=True)
    (run / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in records))
    assert demo.read_scalars(str(tmp_path)) == records
    out = demo.plot_curves(records, str(tmp_path / 'curves.png'), 'test')
    img = cv2.imread(out)
    assert img.shape == (400, 1000, 3)  # figsize (10, 4) at 100 dpi
    assert (img < 250).any()  # something was drawn on the white canvas


def test_dataset_is_reused_only_when_it_matches(tmp_path):
    root = demo.ensure_dataset(str(tmp_path / 'shapes'), quick=True)
    meta = json.load(open(os.path.join(root, META_FILE)))
    assert meta['num_train'] == demo.QUICK_DATA['num_train']
    first = os.path.join(root, 'train', '000000.png')
    stamp = os.stat(first).st_mtime_ns
    demo.ensure_dataset(root, quick=True)
    assert os.stat(first).st_mtime_ns == stamp  # reused, not rewritten
    meta['seed'] = 1
    with open(os.path.join(root, META_FILE), 'w') as f:
        json.dump(meta, f)
    demo.ensure_dataset(root, quick=True)
    assert json.load(open(os.path.join(root, META_FILE)))['seed'] == 0  # regenerated


def test_data_options_point_every_loader_and_evaluator_at_the_root():
    opts = demo.data_options('/d/shapes', workers=0)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert f'{loader}.dataset.data_root=/d/shapes/' in opts
        assert f'{loader}.num_workers=0' in opts
    for ev in ('val_evaluator', 'test_evaluator'):
        assert f'{ev}.ann_file=/d/shapes/annotations/val.json' in opts
    assert not any('num_workers' in o for o in demo.data_options('/d/shapes'))


def test_quick_options_shorten_the_precise_bn_pass():
    cfg = demo._load_cfg(demo.CONFIGS['ours'], 'unused', demo.QUICK_OPTIONS)
    (hook,) = cfg.custom_hooks
    assert hook.type == 'RetinaPreciseBNHook' and hook.num_iters == 4
    assert cfg.train_cfg.max_epochs == 2
    assert Config.fromfile(str(demo.CONFIGS['ours'])).custom_hooks[0].num_iters == 200
