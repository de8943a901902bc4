"""The Triton greedy-NMS kernel, tested without a GPU: ``triton_nms_sweep.py`` runs it in
Triton's CPU interpreter, in one subprocess so that ``TRITON_INTERPRET=1`` (read when Triton is
imported) reaches no other test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).with_name('triton_nms_sweep.py')


def test_triton_kernel_under_interpreter_matches_rounds_and_mmcv():
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
    # 2 IoU tests x 2 offsets x 2 bounds on kept boxes
    assert report['kernel_cases'] == 8
    # 3 NMS configs, each one batched call through the kernel
    assert report['end_to_end_cases'] == 3
    assert report['triton_calls'] == 3
