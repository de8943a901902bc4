"""`import mmdet_retina_plugin` registers our modules in mmdet's registries, next to mmdet's own."""
import subprocess
import sys

import pytest
from mmdet.registry import MODELS, TASK_UTILS

import mmdet_retina_plugin  # noqa: F401

OURS = [(MODELS, 'RetinaFocalLoss'), (MODELS, 'RetinaNetHead'), (MODELS, 'RetinaFPN'),
        (TASK_UTILS, 'RetinaIoUAssigner')]
MMDET_TWINS = [(MODELS, 'FocalLoss'), (MODELS, 'RetinaHead'), (MODELS, 'FPN'),
               (TASK_UTILS, 'MaxIoUAssigner')]


@pytest.mark.parametrize('registry, name', OURS)
def test_our_names_resolve_to_our_code(registry, name):
    cls = registry.get(name)
    assert cls is not None, name
    assert cls.__module__.startswith('mmdet_retina_plugin.'), cls.__module__
    assert 'PLACEHOLDER' not in open(sys.modules[cls.__module__].__file__).read()


@pytest.mark.parametrize('registry, name', MMDET_TWINS)
def test_mmdet_names_untouched(registry, name):
    # Registering under new names must not replace mmdet's classes for other detectors.
    assert registry.get(name).__module__.startswith('mmdet.'), name


def test_custom_imports_in_a_fresh_process(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
                   "custom_imports = dict(imports=['mmdet_retina_plugin'], "
                   "allow_failed_imports=False)\n"
                   "model = dict(bbox_head=dict(type='RetinaNetHead'))\n")
    code = ('import sys; from mmengine.config import Config; '
            f'cfg = Config.fromfile({str(cfg)!r}); '
            'from mmdet.registry import MODELS; '
            'print(MODELS.get(cfg.model.bbox_head.type).__module__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith('mmdet_retina_plugin.')
