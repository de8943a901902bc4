"""Trains the tiny RetinaNet of ``helpers/tiny_detector.py``; the reliability tests run it.

Usage::

    python train_tiny.py DATA_ROOT WORK_DIR [--max-iters N] [--resume] [--stock-ckpt]
        [--fault after_iter:K | ckpt_write:K | pointer_write:K] [--launcher pytorch]

Faults kill this process with SIGKILL (like ``kill -9``: no cleanup, no ``finally``):

* ``after_iter:K``: after iteration K and its hooks (between checkpoint saves);
* ``ckpt_write:K``: mid-write of checkpoint ``iter_K.pth``, after half its bytes hit the disk;
* ``pointer_write:K``: mid-write of ``last_checkpoint`` when it is being pointed at
  ``iter_K.pth``.

``--fault nan_loss:K:R`` instead makes rank R's loss NaN at iteration K (no kill).

``--launcher pytorch`` runs under ``torchrun``; the config then asks for CPU distributed training
as ``docs/reliability.md`` says (``RetinaCPUDistributedRunner``, gloo,
``RetinaDistributedDataParallel``; mmengine's own code where an accelerator exists).

After training each rank saves its final parameters and buffers as
``WORK_DIR/final_rank{R}.pth`` (``dict(params=..., buffers=...)``).
"""
import argparse
import builtins
import os
import os.path as osp
import signal
import sys
from typing import Any

import torch

sys.path[:0] = [osp.dirname(osp.abspath(__file__)),
                osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'helpers')]

from mmengine.dist import get_rank  # noqa: E402
from mmengine.fileio.backends import local_backend  # noqa: E402
from mmengine.hooks import Hook, checkpoint_hook  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from tiny_detector import tiny_config  # noqa: E402

import mmdet_retina_plugin  # noqa: E402,F401
from mmdet_retina_plugin.engine import atomic_io  # noqa: E402


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfterIter(Hook):
    priority = 'LOWEST'  # after the checkpoint hook, so iteration K is complete

    def __init__(self, k: int) -> None:
        self.k = k

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.k:
            _die()


class _NanLoss(Hook):
    """Multiplies every loss of rank ``rank`` by NaN at iteration ``k``."""

    def __init__(self, k: int, rank: int) -> None:
        self.k, self.rank = k, rank

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 != self.k or get_rank() != self.rank:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        clean_loss = model.loss

        def nan_loss(*args: Any, **kwargs: Any) -> dict:
            losses = clean_loss(*args, **kwargs)
            nan = float('nan')
            return {k: [x * nan for x in v] if isinstance(v, list) else v * nan
                    for k, v in losses.items()}

        model.loss = nan_loss

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.__dict__.pop('loss', None)


class _KillingFile:
    """File proxy that writes half of the first matching payload, syncs it, then dies."""

    def __init__(self, f: Any, content: str) -> None:
        self._f, self._content = f, content

    def write(self, data: Any) -> int:
        needle = self._content.encode() if isinstance(data, bytes) else self._content
        if needle in data:
            self._f.write(data[:len(data) // 2])
            self._f.flush()
            os.fsync(self._f.fileno())
            _die()
        return self._f.write(data)

    def __enter__(self) -> '_KillingFile':
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _install_write_fault(name_part: str, content: str) -> None:
    real_open = builtins.open

    def fault_open(file: Any, mode: str = 'r', *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        if 'w' in mode and name_part in osp.basename(os.fspath(file)):
            return _KillingFile(f, content)
        return f

    # Every module that writes checkpoint files or the pointer, ours and mmengine's.
    for module in (atomic_io, local_backend, checkpoint_hook):
        module.open = fault_open


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('data_root')
    p.add_argument('work_dir')
    p.add_argument('--max-iters', type=int, default=6)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--stock-ckpt', action='store_true', help="mmengine's CheckpointHook")
    p.add_argument('--fault', default='')
    p.add_argument('--launcher', default='none')
    args = p.parse_args()

    cfg = tiny_config(args.data_root, args.work_dir, max_iters=args.max_iters,
                      atomic=not args.stock_ckpt)
    cfg.launcher = args.launcher
    if args.launcher == 'pytorch':
        cfg.runner_type = 'RetinaCPUDistributedRunner'
        cfg.model_wrapper_cfg = dict(type='RetinaDistributedDataParallel', broadcast_buffers=False)
    cfg.resume = args.resume
    kind, _, k = args.fault.partition(':')
    if kind == 'ckpt_write':
        _install_write_fault(f'iter_{k}.pth', '')
    elif kind == 'pointer_write':
        _install_write_fault('last_checkpoint', f'iter_{k}.pth')
    runner = RUNNERS.build(cfg)  # the config's runner_type, mmengine's Runner by default
    if kind == 'after_iter':
        runner.register_hook(_KillAfterIter(int(k)))
    elif kind == 'nan_loss':
        it, _, rank = k.partition(':')
        runner.register_hook(_NanLoss(int(it), int(rank)))
    elif kind:
        assert kind in ('ckpt_write', 'pointer_write'), args.fault
    runner.train()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    torch.save(dict(params=dict(model.named_parameters()), buffers=dict(model.named_buffers())),
               osp.join(args.work_dir, f'final_rank{get_rank()}.pth'))


if __name__ == '__main__':
    main()
