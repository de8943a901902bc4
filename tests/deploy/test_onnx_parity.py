"""ONNX Runtime detections equal ``mmdet.apis.inference_detector``'s, image by image."""
from typing import Dict, List

import numpy as np
from mmdet.apis import inference_detector, init_detector

from mmdet_retina_plugin.deploy import OnnxRetinaNet
from tests.deploy.conftest import R50_SCALE, textured_image


def torch_detections(files, images: List[np.ndarray]) -> List[Dict[str, np.ndarray]]:
    model = init_detector(str(files['config']), str(files['checkpoint']), device='cpu')
    out = []
    for image in images:
        pred = inference_detector(model, image).pred_instances
        out.append(dict(bboxes=pred.bboxes.numpy(), scores=pred.scores.numpy(),
                        labels=pred.labels.numpy()))
    return out


def assert_same_detections(ours: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> None:
    """Same labels, boxes within 1e-3 relative, scores within 1e-4, compared as sets (exactly
    tied scores may come in either order)."""
    assert ours['bboxes'].dtype == np.float32 and ours['labels'].dtype == np.int64
    assert ours['bboxes'].shape == ref['bboxes'].shape
    np.testing.assert_allclose(ours['scores'], ref['scores'], rtol=0, atol=1e-4)

    def order(d: Dict[str, np.ndarray]) -> np.ndarray:
        return np.lexsort((d['bboxes'][:, 1], d['bboxes'][:, 0], np.round(d['scores'], 4),
                           d['labels']))

    a, b = order(ours), order(ref)
    np.testing.assert_array_equal(ours['labels'][a], ref['labels'][b])
    np.testing.assert_allclose(ours['bboxes'][a], ref['bboxes'][b], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours['scores'][a], ref['scores'][b], rtol=0, atol=1e-4)


# (height, width): square, landscape, portrait, sizes that are not multiples of 32
DEMO_SIZES = [(160, 160), (96, 224), (200, 120), (75, 133)]


def test_demo_detector_matches_pytorch(demo_detector):
    images = [textured_image(h, w, seed=i) for i, (h, w) in enumerate(DEMO_SIZES)]
    images.append(np.zeros((96, 128, 3), np.uint8))  # black: no detection
    ref = torch_detections(demo_detector, images)
    assert all(len(r['scores']) > 0 for r in ref[:-1]) and len(ref[-1]['scores']) == 0
    runner = OnnxRetinaNet(demo_detector['onnx'])
    for image, expected in zip(images, ref):
        assert_same_detections(runner.det([image])[0], expected)


def test_demo_batch_matches_single_images(demo_detector):
    # all three pad to 160 x 160 alone, so the batch holds the very inputs of single runs
    images = [textured_image(160, 160, seed=7), textured_image(150, 140, seed=8),
              np.zeros((130, 160, 3), np.uint8)]
    ref = torch_detections(demo_detector, images)
    results = OnnxRetinaNet(demo_detector['onnx']).det(images)
    assert len(results) == 3 and len(ref[-1]['scores']) == 0
    for ours, expected in zip(results, ref):
        assert_same_detections(ours, expected)


def test_r50_config_matches_pytorch(r50_detector):
    # the test resize (320 x 192, keep_ratio) scales these by 1, 0.8 and 2 exactly, by 0.64 x
    # 0.6417 (rounded sizes) and up from a portrait 60 x 40
    sizes = [(192, 256), (240, 400), (96, 160), (300, 500), (60, 40)]
    images = [textured_image(h, w, seed=10 + i) for i, (h, w) in enumerate(sizes)]
    ref = torch_detections(r50_detector, images)
    runner = OnnxRetinaNet(r50_detector['onnx'])
    assert runner.meta['resize']['scale'] == list(R50_SCALE)
    for image, expected in zip(images, ref):
        assert len(expected['scores']) == 100  # max_per_img: NMS had plenty to do
        assert_same_detections(runner.det([image])[0], expected)
    # a batch of the second and third (both 192 x 320 after resizing, so no extra padding)
    for ours, expected in zip(runner.det(images[1:3]), ref[1:3]):
        assert_same_detections(ours, expected)


def test_frozen_norms_are_folded_into_the_exported_convolutions(tmp_path):
    """The demo detector with the GPU configs' frozen backbone norms: the export folds all of
    them into their convolutions (no norm arithmetic left in the graph) and detects what
    PyTorch's unfolded model detects."""
    import onnx
    from mmengine.config import Config

    from mmdet_retina_plugin.deploy import export_onnx, read_metadata
    from tests.deploy.conftest import DEMO_CONFIG, _logit, _write_detector

    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.model.backbone.norm_cfg = dict(type='RetinaFrozenBN', requires_grad=False)
    files = _write_detector(cfg, tmp_path, 'frozen', _logit(0.05) - 0.62)
    onnx_path = export_onnx(files['config'], files['checkpoint'], tmp_path / 'frozen.onnx',
                            dynamic=True, input_size=(160, 160))
    assert read_metadata(onnx_path)['frozen_norms_folded'] == 20  # ResNet-18's norms
    nodes = onnx.load(str(onnx_path)).graph.node
    conv_outputs = {out for node in nodes if node.op_type == 'Conv' for out in node.output}
    # a norm left unfolded is a multiply (and an add) of a convolution's output
    assert not [node.name for node in nodes if node.op_type in ('Mul', 'BatchNormalization')
                and conv_outputs.intersection(node.input)]
    images = [textured_image(160, 160, seed=3), textured_image(96, 128, seed=4)]
    ref = torch_detections(files, images)
    assert all(len(r['scores']) > 0 for r in ref)
    runner = OnnxRetinaNet(onnx_path)
    for image, expected in zip(images, ref):
        assert_same_detections(runner.det([image])[0], expected)
