"""The Triton focal kernel, tested without a GPU: ``triton_interpreter_sweep.py`` runs it in
Triton's CPU interpreter, in one subprocess so that ``TRITON_INTERPRET=1`` (read when Triton is
imported) reaches no other test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).with_name('triton_interpreter_sweep.py')


def test_triton_kernel_under_interpreter_matches_eager_and_mmdet():
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, str(SWEEP)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert lines, f'no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}'
    report = json.loads(lines[-1])
    if 'skip' in report:
        pytest.skip(report['skip'])
    assert report['failures'] == [], '\n'.join(report['failures'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 3 gammas x 3 weight modes x 2 targets x reduced or not x gradient or not x 3 dtypes
    assert report['kernel_cases'] == 216
    # 2 targets x 3 dtypes x 3 calls x 2 gammas, each with and without gradient, all on Triton
    assert report['loss_cases'] == 36
    assert report['triton_calls'] == 72
