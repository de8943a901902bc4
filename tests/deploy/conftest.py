"""Detectors exported once per session: the demo detector and the R50 RetinaNet config.

Both have random weights (nothing is downloaded) with the class bias raised, so that every
image gets detections to compare; the R50 config's test resize is shrunk to keep the inputs
small.
"""
import math
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from mmdet_retina_plugin.deploy import export_onnx

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / 'configs' / 'demo' / 'retinanet_shapes.py'
R50_CONFIG = REPO / 'configs' / 'retinanet' / 'retina-plugin_r50_fpn_1x_coco.py'
# R50 test resize: images up to 320 x 192 (instead of 1333 x 800)
R50_SCALE = (320, 192)


def textured_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 BGR image of smooth random blobs (structure for the random convs to respond to)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(height // 16, 2), max(width // 16, 2), 3))
    import cv2
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(
        0, 255).astype(np.uint8)


def assert_raw_outputs_equal(raw: Dict[str, np.ndarray], cls_scores, bbox_preds) -> None:
    """``OnnxRetinaNet.raw`` outputs equal the head's per-level logits and deltas (1e-4)."""
    for i, (cls, box) in enumerate(zip(cls_scores, bbox_preds)):
        np.testing.assert_allclose(raw[f'cls_score_{i}'], cls.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(raw[f'bbox_pred_{i}'], box.numpy(), rtol=1e-4, atol=1e-4)


def _write_detector(cfg: Config, root: Path, name: str, bias: float, weight_scale: float = 1.0,
                    seed: int = 0) -> Dict[str, Path]:
    """Builds ``cfg.model`` with seeded random weights, class bias ``bias`` and the class
    predictor's weights times ``weight_scale``; writes the config and a checkpoint (with class
    names) under ``root``."""
    init_default_scope('mmdet')
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        model.bbox_head.retina_cls.bias.fill_(bias)
        model.bbox_head.retina_cls.weight.mul_(weight_scale)
    classes = [f'class_{i}' for i in range(model.bbox_head.num_classes)]
    config, checkpoint = root / f'{name}.py', root / f'{name}.pth'
    cfg.dump(str(config))
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=classes))),
               checkpoint)
    return dict(config=config, checkpoint=checkpoint)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope='session')
def demo_detector(tmp_path_factory) -> Dict[str, Path]:
    """The demo detector (random weights) and its dynamic ONNX export.

    The class bias sits 0.62 below the logit of ``score_thr`` (0.05): on these weights a black
    image's best logit stays below the threshold (no detections) and a textured image's best
    ones pass it (the tests assert both).
    """
    root = tmp_path_factory.mktemp('deploy_demo')
    files = _write_detector(Config.fromfile(str(DEMO_CONFIG)), root, 'demo', _logit(0.05) - 0.62)
    files['onnx'] = export_onnx(files['config'], files['checkpoint'], root / 'demo.onnx',
                                dynamic=True, input_size=(160, 160))
    return files


@pytest.fixture(scope='session')
def r50_detector(tmp_path_factory) -> Dict[str, Path]:
    """The R50 RetinaNet config (random weights, test resize to 320 x 192) and its dynamic
    ONNX export.

    The class predictor's weights are scaled up so that scores spread over (0, 1): with the
    init's std of 0.01 they all sit within ~1e-6 of each other, and which of them make the
    100 kept per image would come down to float rounding.
    """
    root = tmp_path_factory.mktemp('deploy_r50')
    cfg = Config.fromfile(str(R50_CONFIG))
    cfg.model.backbone.init_cfg = None
    for transform in cfg.test_dataloader.dataset.pipeline:
        if transform['type'] == 'Resize':
            transform['scale'] = R50_SCALE
    files = _write_detector(cfg, root, 'r50', _logit(0.1), weight_scale=1000.0)
    files['onnx'] = export_onnx(files['config'], files['checkpoint'], root / 'r50.onnx',
                                dynamic=True)
    return files
