"""Atomic writes and RetinaAtomicCheckpointHook vs mmengine's CheckpointHook on a failed save."""
import os
import os.path as osp

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.engine import atomic_io
from mmdet_retina_plugin.engine.atomic_io import AtomicLocalBackend, atomic_write
from mmdet_retina_plugin.engine.hooks import RetinaAtomicCheckpointHook


class _FailingFile:
    """Writes half of the payload, then raises (a crash in the middle of ``write``)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[:len(data) // 2])
        raise OSError('disk full')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_atomic_write_keeps_old_content_on_failure(tmp_path, monkeypatch):
    target = tmp_path / 'ckpt.pth'
    atomic_write(b'old' * 100, target)
    monkeypatch.setattr(atomic_io, 'open', lambda *a, **k: _FailingFile(open(*a, **k)),
                        raising=False)
    with pytest.raises(OSError, match='disk full'):
        atomic_write(b'new' * 100, target)
    assert target.read_bytes() == b'old' * 100
    assert os.listdir(tmp_path) == ['ckpt.pth']  # temp file removed


def test_backend_registered_and_round_trips(tmp_path):
    backend = get_file_backend(str(tmp_path), backend_args=dict(backend='retina_atomic_local'))
    assert isinstance(backend, AtomicLocalBackend)
    backend.put(b'\x00\x01', tmp_path / 'sub' / 'a.bin')
    backend.put_text('ü', tmp_path / 'b.txt')
    assert (tmp_path / 'sub' / 'a.bin').read_bytes() == b'\x00\x01'
    assert (tmp_path / 'b.txt').read_text(encoding='utf-8') == 'ü'


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, inputs, data_samples=None, mode='loss'):
        return dict(loss=(self.w * torch.stack(inputs)).sum() ** 2)


@pytest.mark.parametrize('hook_type,resumable', [(CheckpointHook, False),
                                                 (RetinaAtomicCheckpointHook, True)])
def test_failed_save_with_max_keep_ckpts(tmp_path, hook_type, resumable):
    """A save of iter 3 that dies: mmengine has already deleted iter_2.pth, which
    last_checkpoint still names; ours deletes only after the new save succeeded."""
    runner = Runner(
        model=Toy(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=[dict(inputs=torch.ones(1))] * 4,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='pseudo_collate'), batch_size=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=4),
        default_hooks=dict(checkpoint=hook_type(interval=1, by_epoch=False, max_keep_ckpts=1)))
    save = runner.save_checkpoint

    def dying_save(out_dir, filename, *args, **kwargs):
        if filename == 'iter_3.pth':
            raise KeyboardInterrupt('killed during save')
        return save(out_dir, filename, *args, **kwargs)

    runner.save_checkpoint = dying_save
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    with open(tmp_path / 'last_checkpoint') as f:
        pointer = f.read().strip()
    assert osp.basename(pointer) == 'iter_2.pth'
    assert osp.exists(pointer) == resumable


@pytest.mark.parametrize('kwargs', [dict(interval=0), dict(max_keep_ckpts=0),
                                    dict(file_client_args=dict(backend='disk'))])
def test_invalid_args(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetinaAtomicCheckpointHook(**kwargs)


def test_remote_out_dir_keeps_inferred_backend():
    assert RetinaAtomicCheckpointHook(out_dir='s3://bucket/x').backend_args is None
    assert RetinaAtomicCheckpointHook().backend_args == dict(backend='retina_atomic_local')
