"""Two CPU processes (torchrun + gloo) train the tiny RetinaNet; rank 1 gets a NaN loss once.

Checks that both ranks finish (the NaN on one rank makes *both* skip the step, so DDP's
gradient all-reduce cannot deadlock) and end with bit-identical parameters.
"""
import os.path as osp
import re
import subprocess

import torch
from rel_helpers import TRAIN, child_env, state_dicts_equal, tail, torchrun


def test_two_process_gloo_training_with_nan_on_one_rank(shapes_root, tmp_path):
    work, log = str(tmp_path / 'work'), str(tmp_path / 'ddp.log')
    with open(log, 'w') as f:
        rc = subprocess.run(
            [*torchrun(2), TRAIN, shapes_root, work, '--max-iters', '4', '--launcher', 'pytorch',
             '--fault', 'nan_loss:3:1'],
            stdout=f, stderr=subprocess.STDOUT, env=child_env(), timeout=150).returncode
    assert rc == 0, tail(log)
    with open(log) as f:
        text = f.read()
    # rank 0 skipped too because of rank 1's NaN, and names its own batch's images
    assert re.search(r'Non-finite loss on another rank at iter 3.*'
                     r'batch: \(img_id=\d+, img_path=\S+\.png', text)
    r0 = torch.load(osp.join(work, 'final_rank0.pth'), map_location='cpu')
    r1 = torch.load(osp.join(work, 'final_rank1.pth'), map_location='cpu')
    assert state_dicts_equal(r0['params'], r1['params']) == []
    assert all(torch.isfinite(p).all() for p in r0['params'].values())
    # BN running statistics are per rank (mmengine's DDP uses broadcast_buffers=False; SyncBN
    # would share them, see docs/reliability.md), so only parameters must agree.
