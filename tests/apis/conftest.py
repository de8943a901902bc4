"""A tiny RetinaNet with random weights (spread scores), its config, checkpoint and ONNX files."""
import math
from pathlib import Path
from typing import Dict

import pytest
from tiny_detector import tiny_config

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from tests.deploy.conftest import _write_detector

# the tiny head's GroupNorm needs P6 (stride 64) larger than 1x1: tiles of 128 px
TILE = 128


@pytest.fixture(scope='session')
def tiny_files(tmp_path_factory) -> Dict[str, Path]:
    """``config``, ``checkpoint``, ``onnx`` (dynamic) and ``onnx_fixed`` (batch 1, 128x128).

    The class predictor's weights are scaled by 10 and its bias set to the logit of 0.1, so that
    scores spread over ~(0.005, 0.85) and a tile has detections above ``score_thr``: with the
    init's std of 0.01 they would all sit within float rounding of each other (x1000, as for
    the R50 in ``tests/deploy``, saturates this small head at 1.0).
    """
    from mmdet_retina_plugin.deploy import export_onnx
    root = tmp_path_factory.mktemp('slice_tiny')
    cfg = tiny_config()
    cfg.model.test_cfg.max_per_img = 20
    files = _write_detector(cfg, root, 'tiny', math.log(0.1 / 0.9), weight_scale=10.0)
    files['onnx'] = export_onnx(files['config'], files['checkpoint'], root / 'tiny.onnx',
                                dynamic=True, input_size=(TILE, TILE))
    files['onnx_fixed'] = export_onnx(files['config'], files['checkpoint'],
                                      root / 'tiny_fixed.onnx', input_size=(TILE, TILE))
    return files


@pytest.fixture(scope='session')
def tiny_model(tiny_files):
    """The tiny detector built by ``mmdet.apis.init_detector`` (so it has ``cfg``)."""
    from mmdet.apis import init_detector
    return init_detector(str(tiny_files['config']), str(tiny_files['checkpoint']), device='cpu')
