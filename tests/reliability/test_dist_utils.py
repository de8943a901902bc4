"""reduce_mean_avg_factor: identity without torch.distributed, all-reduce mean with it."""
import os.path as osp
import subprocess

import torch

from mmdet_retina_plugin.utils.dist_utils import reduce_mean_avg_factor
from rel_helpers import HERE, child_env, torchrun


def test_single_process_is_identity_clamped():
    assert reduce_mean_avg_factor(torch.tensor(7.0)).item() == 7.0
    assert reduce_mean_avg_factor(torch.tensor(0)).item() == 1.0  # no positives: no div by 0
    x = torch.tensor(3.0)
    reduce_mean_avg_factor(x)
    assert x.item() == 3.0


def test_two_processes_average_then_clamp():
    out = subprocess.run(
        [*torchrun(2), osp.join(HERE, 'dist_avg_worker.py'), '2,7', '0,1'],
        capture_output=True, text=True, env=child_env(), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    results = sorted(tuple(line.split()[1:]) for line in out.stdout.splitlines()
                     if line.startswith('RESULT'))
    # case '2,7': mean 4.5 on both ranks, inputs untouched; case '0,1': mean 0.5 -> clamped to 1
    assert results == sorted([('0', '4.5', '2.0'), ('1', '4.5', '7.0'),
                              ('0', '1.0', '0.0'), ('1', '1.0', '1.0')])
