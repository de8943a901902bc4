"""The tiled-training demo end to end in --quick mode, and its duplicate count."""
import json
import os
import subprocess
import sys

import cv2

from mmdet_retina_plugin.tools import demo_tiles
from mmdet_retina_plugin.tools.demo import _load_cfg


def test_quick_demo_writes_every_artefact(tmp_path):
    work = tmp_path / 'demo_tiles'
    # one thread per process: the suite shares its cores (see tests/tools/test_demo.py)
    proc = subprocess.run([sys.executable, '-m', 'mmdet_retina_plugin.tools.demo_tiles',
                           '--quick', '--work-dir', str(work)],
                          env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Epoch(train)' in proc.stdout + proc.stderr
    assert 'small-object mAP sliced / whole' in proc.stdout

    summary = json.load(open(work / 'summary.json'))
    assert os.path.isfile(summary['checkpoint']) and summary['quick'] is True
    for tag in ('sliced', 'whole'):
        result = summary[tag]
        for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_s'):
            assert result[key] == -1 or 0.0 <= result[key] <= 1.0, (tag, key)
        assert 0.0 <= result['duplicates_percent'] <= 100.0
        assert result['duplicates'] <= result['counted']
        assert os.path.isfile(result['detections'])
    picture = cv2.imread(summary['picture'])
    assert picture is not None and picture.shape[:2] == (300, 800)  # two 300 x 400 panels


def test_count_duplicates_counts_objects_found_twice(tmp_path):
    ann = dict(images=[dict(id=1, file_name='a.png', height=100, width=100)],
               categories=[dict(id=1, name='a'), dict(id=2, name='b')],
               annotations=[dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 20, 20]),
                            dict(id=2, image_id=1, category_id=1, bbox=[50, 50, 20, 20])])
    dets = [dict(image_id=1, category_id=1, bbox=[10, 10, 20, 20], score=0.9),
            dict(image_id=1, category_id=1, bbox=[11, 11, 20, 20], score=0.8),  # twice
            dict(image_id=1, category_id=1, bbox=[50, 50, 20, 20], score=0.7),
            dict(image_id=1, category_id=2, bbox=[50, 50, 20, 20], score=0.7),  # other class
            dict(image_id=1, category_id=1, bbox=[10, 10, 8, 8], score=0.6),  # IoU 0.16
            dict(image_id=1, category_id=1, bbox=[51, 50, 20, 20], score=0.2)]  # under thr
    (tmp_path / 'ann.json').write_text(json.dumps(ann))
    (tmp_path / 'dets.json').write_text(json.dumps(dets))
    counts = demo_tiles.count_duplicates(str(tmp_path / 'ann.json'), str(tmp_path / 'dets.json'),
                                         score_thr=0.3)
    assert counts == dict(detections=5, duplicates=1, percent=20.0)


def test_whole_image_cfg_is_plain_retinanet_fitting_1333x800(tmp_path):
    cfg = demo_tiles.whole_image_cfg(_load_cfg(demo_tiles.CONFIG, str(tmp_path),
                                                    demo_tiles.data_options('/d')))
    assert cfg.model.type == 'RetinaNet' and 'slice_cfg' not in cfg.model
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] == 'Resize']
    assert resize == [dict(type='Resize', scale=(1333, 800), keep_ratio=True)]
