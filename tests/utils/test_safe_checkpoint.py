"""Resume and load_from on torch >= 2.6 (weights_only=True loads), without turning weights_only
off."""
import copy
import io
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from tiny_detector import tiny_config, tiny_data

import mmdet_retina_plugin  # noqa: F401  (applies the allow-list)

ITERS_PER_EPOCH = 4  # 8 train images, batch 2


SEEN: dict = {}  # what _RecordStart saw; the Runner builds hooks from (serialisable) dicts


@HOOKS.register_module(force=True)
class _RecordStart(Hook):
    """Records what the Runner holds when training starts, i.e. right after resuming."""

    def before_train(self, runner) -> None:
        SEEN.clear()
        SEEN.update(iter=runner.iter, epoch=runner.epoch,
                    optim=copy.deepcopy(runner.optim_wrapper.state_dict()),
                    weights={k: v.clone() for k, v in runner.model.state_dict().items()})


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes')) + '/'
    tiny_data(root)
    return root


def _train(data, work_dir, max_epochs, **kwargs):
    # Every checkpoint kept: the resume test continues in the cut run's work dir, and the
    # load_from test still needs that run's epoch_1.pth afterwards.
    cfg = tiny_config(data, str(work_dir), max_epochs=max_epochs, ckpt_interval=1,
                      max_keep_ckpts=-1, atomic=False)
    cfg.val_cfg = None  # resume is what is under test: skip evaluation
    cfg.val_dataloader = None
    cfg.val_evaluator = None
    # A schedule that does not depend on max_epochs, as for a run cut short by a crash.
    cfg.param_scheduler[0]['end'] = 2
    for key, value in kwargs.items():
        cfg[key] = value
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _assert_state_equal(a, b, path=''):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_state_equal(a[k], b[k], f'{path}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f'{path}[{i}]')
    else:
        assert a == b, path


def test_torch_defaults_to_weights_only():
    # The premise of this file: a plain torch.load is a weights-only load on this torch.
    plain = subprocess.run(
        [sys.executable, '-c', 'import torch; '
         'print(torch.serialization._default_to_weights_only(None))'],
        capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == 'True'


@pytest.fixture(scope='module')
def cut(data, tmp_path_factory):
    """A run cut after epoch 1 of 2: its work dir and checkpoint."""
    work_dir = tmp_path_factory.mktemp('cut')
    _train(data, work_dir, max_epochs=1)
    return work_dir, work_dir / 'epoch_1.pth'


def test_resume_continues_from_checkpoint(data, cut, tmp_path):
    straight = _train(data, tmp_path / 'straight', max_epochs=2)
    expected = {k: v.clone() for k, v in straight.model.state_dict().items()}

    work_dir, ckpt_path = cut
    # Without the plugin's allow-list, this torch refuses mmengine's own checkpoint.
    bare = subprocess.run([sys.executable, '-c', f'import torch; torch.load({str(ckpt_path)!r})'],
                          capture_output=True, text=True)
    assert bare.returncode != 0 and 'HistoryBuffer' in bare.stderr

    ckpt = torch.load(ckpt_path, map_location='cpu')  # weights_only=True by default
    resumed = _train(data, work_dir, max_epochs=2, resume=True, load_from=str(ckpt_path),
                     custom_hooks=[dict(type='_RecordStart')])

    assert SEEN['iter'] == ITERS_PER_EPOCH and SEEN['epoch'] == 1
    _assert_state_equal(SEEN['optim'], ckpt['optimizer'])
    assert any(s['momentum_buffer'] is not None
               for s in ckpt['optimizer']['state'].values()), 'SGD momentum was not saved'
    for name, value in ckpt['state_dict'].items():
        assert torch.equal(SEEN['weights'][name], value), name
    assert resumed.iter == 2 * ITERS_PER_EPOCH and resumed.epoch == 2
    # Same seed, no random transforms, deterministic CPU kernels: the cut run ends where the
    # straight run did.
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=name)


def test_load_from_loads_weights_only(data, cut, tmp_path):
    ckpt = torch.load(cut[1], map_location='cpu')
    _train(data, tmp_path / 'b', max_epochs=1, load_from=str(cut[1]),
           custom_hooks=[dict(type='_RecordStart')])
    assert SEEN['iter'] == 0  # load_from without resume starts a new schedule
    for name, value in ckpt['state_dict'].items():
        assert torch.equal(SEEN['weights'][name], value), name


def test_mim_train_resume_cli(data, tmp_path):
    """The failure users hit: `mim train mmdet CFG --resume` on torch >= 2.6."""
    cfg = tiny_config(data, str(tmp_path / 'wd'), max_epochs=1, ckpt_interval=1,
                      atomic=False)
    cfg.log_level = 'INFO'  # the resume message is an INFO line
    cfg_path = tmp_path / 'tiny.py'
    cfg.dump(str(cfg_path))
    base = [sys.executable, '-m', 'mim', 'train', 'mmdet', str(cfg_path),
            '--work-dir', str(tmp_path / 'wd')]
    first = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(base + ['--resume', '--cfg-options', 'train_cfg.max_epochs=2'],
                            capture_output=True, text=True, timeout=300)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert 'resumed epoch: 1, iter: 4' in out
    ckpt = torch.load(tmp_path / 'wd' / 'epoch_2.pth', map_location='cpu')
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 2 * ITERS_PER_EPOCH


def _crafted_checkpoint(payload) -> bytes:
    """A torch zip checkpoint whose pickle holds ``payload`` beside a tensor."""
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.ones(2)}}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src:
        out = io.BytesIO()
        with zipfile.ZipFile(out, 'w') as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename.endswith('data.pkl'):
                    data = pickle.dumps({'state_dict': {}, 'meta': payload}, protocol=2)
                dst.writestr(item, data)
    return out.getvalue()


class _Foreign:
    pass


@pytest.mark.parametrize('payload, needle', [
    (_Foreign(), '_Foreign'),
    (os.getcwd, 'getcwd'),
])
def test_foreign_globals_still_refused(payload, needle):
    blob = _crafted_checkpoint(payload)
    with pytest.raises(pickle.UnpicklingError, match=needle):
        torch.load(io.BytesIO(blob))


def test_getattr_only_resolves_history_buffer_statistics():
    class Evil:
        def __reduce__(self):
            return getattr, (HistoryBuffer, '__init__')

    blob = _crafted_checkpoint(Evil())
    with pytest.raises(pickle.UnpicklingError, match='refused getattr'):
        torch.load(io.BytesIO(blob))
    # The allowed case: what mmengine pickles for a HistoryBuffer round-trips.
    buf = HistoryBuffer()
    buf.update(3.0)
    blob = io.BytesIO()
    torch.save({'hb': buf}, blob)
    blob.seek(0)
    assert torch.load(blob)['hb'].mean() == 3.0
