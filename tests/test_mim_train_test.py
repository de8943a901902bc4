"""``mim train mmdet`` then ``mim test mmdet`` on the demo config, through openmim's CLI."""
import os
import re
import subprocess
import sys

from mmdet_retina_plugin.datasets.synthetic_shapes import make_dataset
from mmdet_retina_plugin.tools.demo import CONFIGS, data_options


def _mim(*args, cwd):
    # One thread per process: the suite shares its cores (see tests/tools/test_demo.py).
    proc = subprocess.run([sys.executable, '-m', 'mim', *args], cwd=cwd, capture_output=True,
                          text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_mim_train_then_mim_test(tmp_path):
    make_dataset(str(tmp_path / 'data'), num_train=8, num_val=4, image_size=(128, 128), seed=0)
    options = data_options(str(tmp_path / 'data'), workers=0) + [
        'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
        # untrained: keep every box so CocoMetric has detections to score
        'model.test_cfg.score_thr=0.0']
    work = tmp_path / 'work'
    config = str(CONFIGS['ours'])
    log = _mim('train', 'mmdet', config, '--work-dir', str(work), '--cfg-options', *options,
               cwd=tmp_path)
    assert 'Epoch(train) [1][2/2]' in log
    checkpoint = (work / 'last_checkpoint').read_text().strip()
    assert os.path.isfile(checkpoint) and checkpoint.endswith('epoch_1.pth')

    log = _mim('test', 'mmdet', config, '--checkpoint', checkpoint, '--work-dir',
               str(tmp_path / 'test'), '--cfg-options', *options, cwd=tmp_path)
    match = re.search(r'coco/bbox_mAP: (-?[0-9.]+)', log)
    assert match, log[-4000:]
    assert 0.0 <= float(match.group(1)) <= 1.0
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all' in log  # pycocotools ran
