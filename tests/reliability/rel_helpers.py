"""Helpers for the reliability tests that run ``train_tiny.py`` in subprocesses.

Imported by name (``conftest.py`` puts this folder on ``sys.path``); the names are prefixed
with ``rel_`` because pytest runs with ``--import-mode=importlib`` and folders share basenames.
"""
import os
import os.path as osp
import socket
import subprocess
import sys
from typing import List

import pytest

HERE = osp.dirname(osp.abspath(__file__))
TRAIN = osp.join(HERE, 'train_tiny.py')
PYTHON = sys.executable


def child_env(threads: int = 1) -> dict:
    """Environment for training subprocesses: one thread each (2 cores are shared), and the
    same thread count in every run so float reductions happen in the same order."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED='0')
    return env


def torchrun(nproc: int = 2) -> List[str]:
    """``torchrun`` command prefix on a free local port (static rendezvous: no etcd/c10d store
    negotiation, which was flaky on an overloaded machine)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return [PYTHON, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--nnodes=1',
            '--master_addr=127.0.0.1', f'--master_port={port}']


def start_train(data_root: str, work_dir: str, *extra: str, log: str) -> subprocess.Popen:
    """Starts ``train_tiny.py`` with its output in ``log``."""
    f = open(log, 'w')
    return subprocess.Popen([PYTHON, TRAIN, data_root, work_dir, *extra], stdout=f,
                            stderr=subprocess.STDOUT, env=child_env(), cwd=HERE)


def finish(proc: subprocess.Popen, log: str, timeout: float = 150) -> int:
    """Waits for ``proc`` (failing the test on timeout) and returns its exit code."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f'training subprocess timed out; log tail:\n{tail(log)}')


def tail(log: str, n: int = 30) -> str:
    with open(log) as f:
        return ''.join(f.readlines()[-n:])


def run_train(data_root: str, work_dir: str, *extra: str, log: str) -> int:
    return finish(start_train(data_root, work_dir, *extra, log=log), log)


def state_dicts_equal(a: dict, b: dict) -> List[str]:
    """Keys whose tensors differ (bitwise) between two state dicts, or differ in key set."""
    diff = sorted(set(a) ^ set(b))
    return diff + [k for k in sorted(set(a) & set(b)) if not bool((a[k] == b[k]).all())
                   or a[k].dtype != b[k].dtype]
