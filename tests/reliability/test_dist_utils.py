"""reduce_mean_avg_factor: identity without torch.distributed, all-reduce mean with it."""
import json
import os.path as osp
import re
import subprocess

import torch
from rel_helpers import HERE, child_env, torchrun

from mmdet_retina_plugin.utils.dist_utils import reduce_mean_avg_factor


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
    # findall, not line by line: two ranks share one pipe and their lines can interleave
    results = sorted(re.findall(r'RESULT (\d) (\d+\.\d+) (\d+\.\d+)', out.stdout))
    # case '2,7': mean 4.5 on both ranks, inputs untouched; case '0,1': mean 0.5 -> clamped to 1
    assert results == sorted([('0', '4.5', '2.0'), ('1', '4.5', '7.0'),
                              ('0', '1.0', '0.0'), ('1', '1.0', '1.0')])


def test_head_sync_avg_factor_uses_the_mean_positive_count_of_all_ranks(tmp_path):
    out = subprocess.run([*torchrun(2), osp.join(HERE, 'dist_head_worker.py'), str(tmp_path)],
                         capture_output=True, text=True, env=child_env(), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    local_avgs = [r['local_avg'] for r in ranks]
    assert local_avgs[0] != local_avgs[1]  # the ranks really differ
    mean_avg = sum(local_avgs) / 2
    for r in ranks:
        for key in ('loss_cls', 'loss_bbox'):
            # same summed loss, divided by the all-rank mean instead of the own count
            expected = r['local'][key] * r['local_avg'] / mean_avg
            assert abs(r['sync'][key] - expected) <= 1e-5 * abs(expected), (r, key)
