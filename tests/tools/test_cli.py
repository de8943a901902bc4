"""The ``mmdet-retina`` command as installed, with a config that has ``mmdet::`` bases."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.test_anchor_coverage import _write_ann

DEMO_CONFIG = Path(__file__).resolve().parents[2] / 'configs' / 'demo' / 'retinanet_shapes.py'
# What pip's easy_install launcher (setuptools < 64, as openmim leaves it) does before main():
# it sets __main__.__requires__, which made pkg_resources re-check torch's setuptools pin.
LAUNCHER = """
__requires__ = 'mmdet-retina-plugin'
import sys
from mmdet_retina_plugin.tools.cli import main
main(sys.argv[1:])
assert '__requires__' not in globals()
"""


def _coverage_args(tmp_path):
    return ['coverage', str(_write_ann(tmp_path)), '--config', str(DEMO_CONFIG),
            '--out', str(tmp_path / 'out'), '--no-search']


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (Path(cmd[cmd.index('--out') + 1]) / 'coverage.json').is_file()


def test_easy_install_launcher_requirement_is_dropped(tmp_path):
    _run([sys.executable, '-c', LAUNCHER, *_coverage_args(tmp_path)])


def test_installed_command(tmp_path):
    script = Path(sys.executable).parent / 'mmdet-retina'
    if not script.is_file():
        pytest.skip('mmdet-retina is not installed next to this interpreter')
    _run([str(script), *_coverage_args(tmp_path)])
