"""ONNX Runtime detections equal ``mmdet.apis.inference_detector``'s, image by image."""
from typing import Dict, List

import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector, init_detector

from mmdet_retina_plugin.deploy import OnnxRetinaNet
from tests.deploy.conftest import textured_image


def torch_detections(files, images: List[np.ndarray]) -> List[Dict[str, np.ndarray]]:
    model = init_detector(str(files['config']), str(files['checkpoint']), device='cpu')
    out = []
    for image in images:
        pred = inference_detector(model, image).pred_instances
        out.append(dict(bboxes=pred.bboxes.numpy(), scores=pred.scores.numpy(),
                        labels=pred.labels.numpy()))
    return out


def assert_same_detections(ours: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> None:
    """Same detections, matched as sets (exactly tied scores may come in either order)."""
    assert ours['bboxes'].dtype == np.float32 and ours['bboxes'].shape == ref['bboxes'].shape
    assert ours['scores'].shape == ref['scores'].shape
    np.testing.assert_allclose(ours['scores'], ref['scores'], rtol=0, atol=1e-4)
    # order both by (label, rounded score, x1, y1) to compare as sets
    def order(d):
        return np.lexsort((d['bboxes'][:, 1], d['bboxes'][:, 0], np.round(d['scores'], 4),
                           d['labels']))
    a, b = order(ours), order(ref)
    np.testing.assert_array_equal(ours['labels'][a], ref['labels'][b])
    np.testing.assert_allclose(ours['bboxes'][a], ref['bboxes'][b], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours['scores'][a], ref['scores'][b], rtol=0, atol=1e-4)


# (height, width): square, landscape, portrait, and sizes that are not multiples of 32
DEMO_SIZES = [(160, 160), (96, 224), (200, 120), (75, 133)]


def test_demo_detector_matches_pytorch(demo_detector):
    images = [textured_image(h, w, seed=i) for i, (h, w) in enumerate(DEMO_SIZES)]
    ref = torch_detections(demo_detector, images)
    runner = OnnxRetinaNet(demo_detector['onnx'])
    for image, ours, expected in zip(images, [runner.det([im])[0] for im in images], ref):
        assert len(expected['scores']) > 0  # the raised bias gives detections to compare
        assert_same_detections(ours, expected)
