"""RetinaPreciseBNHook under torch.distributed (2 gloo processes): each rank averages batches of
its own shard of the training set, then the statistics are averaged over the ranks."""
import json
import os.path as osp
import subprocess

import torch
from rel_helpers import HERE, child_env, torchrun

NUM_SAMPLES, BATCH_SIZE, NUM_ITERS = 16, 2, 3  # as in dist_precise_bn_worker.py


def test_ranks_average_their_own_shards_then_each_other(tmp_path):
    out = subprocess.run([*torchrun(2), osp.join(HERE, 'dist_precise_bn_worker.py'),
                          str(tmp_path)], capture_output=True, text=True, env=child_env(),
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)]
    seen = [[i for batch in r['seen'] for i in batch] for r in ranks]
    # Each rank fed NUM_ITERS full batches of distinct samples, and no sample reached both.
    for ids, r in zip(seen, ranks):
        assert [len(b) for b in r['seen']] == [BATCH_SIZE] * NUM_ITERS
        assert len(set(ids)) == len(ids)
    assert not set(seen[0]) & set(seen[1]), seen
    # So the ranks' own averages differ, and both ended with their mean, bit for bit alike.
    local = [torch.tensor(r['local_mean']) for r in ranks]
    assert not torch.allclose(local[0], local[1])
    for key in ('running_mean', 'running_var'):
        assert ranks[0][key] == ranks[1][key], key
    torch.testing.assert_close(torch.tensor(ranks[0]['running_mean']), (local[0] + local[1]) / 2)
    torch.testing.assert_close(torch.tensor(ranks[0]['running_var']),
                               (torch.tensor(ranks[0]['local_var'])
                                + torch.tensor(ranks[1]['local_var'])) / 2)
