"""A non-editable install (a built wheel) carries the configs: the demo and ``mmdet-retina config``
work from outside the repository with only the installed copy of the plugin on ``PYTHONPATH``."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the build reads; copied, so that the build writes nothing into the checkout.
SOURCES = ('setup.py', 'README.md', 'MANIFEST.in', 'mmdet_retina_plugin', 'configs')


def _repo_configs() -> List[str]:
    root = REPO / 'configs'
    return sorted(p.relative_to(root).as_posix() for p in root.rglob('*')
                  if p.is_file() and p.suffix in ('.py', '.md'))


@pytest.fixture(scope='module')
def installed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """Builds a wheel from a copy of the sources and installs it into a fresh folder.

    Returns:
        Dict[str, Path]: ``wheel``, ``site`` (the install target) and ``cwd`` (an empty folder
        outside the repository to run from).
    """
    root = tmp_path_factory.mktemp('install')
    src = root / 'src'
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info'))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '-q']
    subprocess.run([*pip, 'wheel', '--no-deps', '--no-build-isolation', '-w', str(root / 'dist'),
                    str(src)], check=True, timeout=900)
    (wheel,) = (root / 'dist').glob('mmdet_retina_plugin-*.whl')
    site = root / 'site'
    subprocess.run([*pip, 'install', '--no-deps', '--target', str(site), str(wheel)], check=True,
                   timeout=900)
    cwd = root / 'elsewhere'
    cwd.mkdir()
    return dict(wheel=wheel, site=site, cwd=cwd)


def _run(installed: Dict[str, Path], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # Only the installed plugin on the path; the rest of the stack is this interpreter's.
    env = dict(os.environ, PYTHONPATH=str(installed['site']), OMP_NUM_THREADS='1')
    proc = subprocess.run(args, cwd=installed['cwd'], env=env, capture_output=True, text=True,
                          timeout=1200)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_wheel_and_install_carry_every_config(installed):
    configs = _repo_configs()
    assert 'demo/_base_/retinanet_shapes_common.py' in configs
    with zipfile.ZipFile(installed['wheel']) as whl:
        names = set(whl.namelist())
    assert {f'mmdet_retina_plugin/.mim/configs/{c}' for c in configs} <= names
    assert not any(n.startswith(('tests/', 'bench/')) for n in names)  # fixtures stay out
    site_configs = installed['site'] / 'mmdet_retina_plugin' / '.mim' / 'configs'
    for c in configs:
        assert (site_configs / c).read_bytes() == (REPO / 'configs' / c).read_bytes(), c
    # Python imports the installed copy, not the checkout
    proc = _run(installed, sys.executable, '-c',
                'import mmdet_retina_plugin; print(mmdet_retina_plugin.__file__)')
    assert Path(proc.stdout.strip()).parent == installed['site'] / 'mmdet_retina_plugin'


def test_config_command(installed):
    command = str(installed['site'] / 'bin' / 'mmdet-retina')
    site_configs = installed['site'] / 'mmdet_retina_plugin' / '.mim' / 'configs'
    path = Path(_run(installed, command, 'config', 'retina-plugin_r50_fpn_1x_coco').stdout.strip())
    assert path == site_configs / 'retinanet' / 'retina-plugin_r50_fpn_1x_coco.py'

    listing = _run(installed, command, 'config').stdout.split('\n')
    runnable = [c for c in _repo_configs() if c.endswith('.py') and '_base_' not in c]
    assert sorted(line.split()[1] for line in listing if line) == sorted(runnable)

    unknown = _run(installed, command, 'config', 'retina-plugin_r50_fpn_2x_coco', check=False)
    assert unknown.returncode != 0
    assert "'retina-plugin_r50_fpn_2x_coco'" in unknown.stderr
    assert 'retina-plugin_r50_fpn_1x_coco' in unknown.stderr


def test_quick_demo_runs_from_the_installed_configs(installed):
    work = installed['cwd'] / 'demo'
    proc = _run(installed, sys.executable, '-m', 'mmdet_retina_plugin.tools.demo', '--quick',
                '--work-dir', str(work))
    assert 'bbox mAP (0.50:0.95)' in proc.stdout
    (result,) = json.loads((work / 'summary.json').read_text())['results']
    assert Path(result['config']) == (installed['site'] / 'mmdet_retina_plugin' / '.mim'
                                      / 'configs' / 'demo' / 'retinanet_shapes.py')
    assert 0.0 <= result['bbox_mAP'] <= 1.0 and os.path.isfile(result['checkpoint'])
