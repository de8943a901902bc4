"""Runs a Triton kernel sweep script in Triton's CPU interpreter, in a subprocess, so that
``TRITON_INTERPRET=1`` (read when Triton is imported) reaches no other test."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest


def run_interpreter_sweep(script: Path) -> dict:
    """The JSON report a sweep script prints last; skips the test where Triton is missing.

    Args:
        script (Path): a script that prints one JSON line, ``{"failures": [...], ...}`` or
            ``{"skip": reason}``, and exits non-zero when a case failed.

    Returns:
        dict: the report, after asserting that no case failed.
    """
    return script_report([str(script)], dict(os.environ, TRITON_INTERPRET='1'))


def script_report(argv: List[str], env: Dict[str, str]) -> dict:
    """Runs ``python *argv`` with ``env`` and returns the JSON report it prints last (see
    :func:`run_interpreter_sweep`), after asserting that nothing failed; skips the test on a
    ``{"skip": reason}`` report."""
    proc = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert lines, f'no report (exit {proc.returncode}):\n{proc.stderr[-3000:]}'
    report = json.loads(lines[-1])
    if 'skip' in report:
        pytest.skip(report['skip'])
    assert report['failures'] == [], '\n'.join(report['failures'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return report


def count_calls(owner: object, name: str) -> list:
    """Replaces ``owner.name`` by a wrapper that appends to the returned list on every call:
    a sweep's proof that its cases went through the kernel."""
    calls: list = []
    fn = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    setattr(owner, name, counted)
    return calls
