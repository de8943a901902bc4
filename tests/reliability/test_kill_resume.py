"""kill -9 at three points of a training run, auto-resume, and compare with an uninterrupted run.

Runs (each a fresh ``train_tiny.py`` process, 6 iterations, checkpoint every 2, keep 1):

* baseline: uninterrupted (runs in parallel with the chain below);
* run 1: killed after iteration 3 (between saves)                    -> resumes from iter_2;
* run 2: killed mid-write of ``iter_4.pth`` (half the bytes on disk)  -> resumes from iter_2;
* run 3: killed mid-write of ``last_checkpoint`` -> ``iter_6.pth``    -> resumes from iter_4;
* run 4: finishes.

CPU training is deterministic here (fixed seed, ``deterministic=True``, one thread, no random
augmentation, and mmengine replays the skipped batches on resume), so the resumed run must end
with bit-identical weights and optimizer state.
"""
import os
import os.path as osp

import torch
from rel_helpers import finish, run_train, start_train, state_dicts_equal, tail

import mmdet_retina_plugin  # noqa: F401  (lets torch.load read mmengine checkpoints)


def _pointer(work_dir: str) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _assert_resumable(work_dir: str, expected_iter: int) -> None:
    """``last_checkpoint`` names a complete checkpoint of ``expected_iter``."""
    path = _pointer(work_dir)
    assert osp.basename(path) == f'iter_{expected_iter}.pth', os.listdir(work_dir)
    ckpt = torch.load(path, map_location='cpu')
    assert ckpt['meta']['iter'] == expected_iter


def test_kill_and_resume_reaches_uninterrupted_weights(shapes_root, tmp_path):
    base_dir, dir_ = str(tmp_path / 'baseline'), str(tmp_path / 'chain')
    base_log = str(tmp_path / 'baseline.log')
    baseline = start_train(shapes_root, base_dir, log=base_log)

    steps = [  # (extra args, expected exit code, iteration last_checkpoint must name after)
        (['--fault', 'after_iter:3'], -9, 2),
        (['--resume', '--fault', 'ckpt_write:4'], -9, 2),
        (['--resume', '--fault', 'pointer_write:6'], -9, 4),
        (['--resume'], 0, 6),
    ]
    for i, (extra, rc_expected, ckpt_iter) in enumerate(steps):
        log = str(tmp_path / f'run{i}.log')
        rc = run_train(shapes_root, dir_, *extra, log=log)
        assert rc == rc_expected, f'run {i} {extra}: rc={rc}\n{tail(log)}'
        _assert_resumable(dir_, ckpt_iter)
        if i == 1:  # the half-written temp file is there, the real name never appeared
            assert not osp.exists(osp.join(dir_, 'iter_4.pth'))
            assert any(n.startswith('.iter_4.pth.') for n in os.listdir(dir_))
        if i == 2:  # iter_4 was kept because the pointer still names it
            assert osp.exists(osp.join(dir_, 'iter_6.pth'))
    with open(str(tmp_path / 'run2.log')) as f:
        assert 'Removed 1 temp file(s) of an interrupted save' in f.read()
    with open(str(tmp_path / 'run3.log')) as f:
        assert 'Auto resumed from the latest checkpoint' in f.read()
    assert not any(n.endswith('.retina-tmp') for n in os.listdir(dir_))
    assert sorted(n for n in os.listdir(dir_) if n.endswith('.pth') and n.startswith('iter')) \
        == ['iter_6.pth']  # max_keep_ckpts=1 still honoured across the restarts

    assert finish(baseline, base_log) == 0, tail(base_log)
    ours = torch.load(osp.join(dir_, 'iter_6.pth'), map_location='cpu')
    ref = torch.load(osp.join(base_dir, 'iter_6.pth'), map_location='cpu')
    assert state_dicts_equal(ours['state_dict'], ref['state_dict']) == []
    opt_ours, opt_ref = ours['optimizer']['state'], ref['optimizer']['state']
    assert opt_ours.keys() == opt_ref.keys()
    for k in opt_ref:
        assert state_dicts_equal(opt_ours[k], opt_ref[k]) == [], f'optimizer state {k}'
    assert ours['meta']['iter'] == ref['meta']['iter'] == 6
