"""Sliced inference with a real (tiny, random) RetinaNet: batching, streaming, ONNX Runtime
against PyTorch, and the API against ``RetinaSlicedDetector`` on the same weights."""
import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.structures import InstanceData

from mmdet_retina_plugin.apis import slice_inference, tile_detector
from mmdet_retina_plugin.utils.tiling import tile_windows
from tests.apis.conftest import TILE
from tests.deploy.conftest import textured_image

HEIGHT, WIDTH = 200, 300  # 2 x 3 windows of 128 px at overlap 0.25


def assert_same_detections(a, b, box_tol=1e-3, score_tol=1e-4):
    """Same number of detections, and each of ``a`` has one in ``b`` with its label, box and
    score (compared as sets: ties may order differently)."""
    assert len(a) == len(b) > 0
    close = ((a.bboxes[:, None] - b.bboxes[None]).abs().amax(-1) <= box_tol) & \
        ((a.scores[:, None] - b.scores[None]).abs() <= score_tol) & \
        (a.labels[:, None] == b.labels[None])
    assert close.any(1).all() and close.any(0).all()


@pytest.fixture(scope='module')
def image():
    return textured_image(HEIGHT, WIDTH, seed=5)


def test_batch_size_does_not_change_detections(tiny_model, image):
    one = slice_inference(tiny_model, image, tile=TILE, overlap=0.25, batch_size=1)
    four = slice_inference(tiny_model, image, tile=TILE, overlap=0.25, batch_size=4)
    assert len(tile_windows(HEIGHT, WIDTH, TILE, 0.25)) == 6
    assert_same_detections(one.pred_instances, four.pred_instances)
    boxes = four.pred_instances.bboxes
    assert (boxes >= 0).all() and (boxes[:, 2] <= WIDTH).all() and (boxes[:, 3] <= HEIGHT).all()


def test_the_network_sees_at_most_a_batch_of_tiles(tiny_model):
    seen = []
    handle = tiny_model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        slice_inference(tiny_model, textured_image(300, 400, seed=1), tile=TILE, overlap=0.25,
                        batch_size=5)
    finally:
        handle.remove()
    assert len(tile_windows(300, 400, TILE, 0.25)) == 12
    assert [s[0] for s in seen] == [5, 5, 2] and {s[1:] for s in seen} == {(3, TILE, TILE)}


class CountingSession:
    """An ONNX Runtime session that records the batch size of each run."""

    def __init__(self, session) -> None:
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(feeds['images'].shape[0])
        return self.session.run(outputs, feeds)


@pytest.mark.parametrize('onnx_key, runs', [('onnx', [4, 2]), ('onnx_fixed', [1] * 6)])
def test_onnx_runtime_agrees_with_pytorch(tiny_files, tiny_model, image, onnx_key, runs):
    """A dynamic graph runs each batch of tiles in one call; the fixed batch-1 graph one tile
    per call."""
    torch_result = slice_inference(tiny_model, image, tile=TILE, overlap=0.25, batch_size=4)
    detect = tile_detector(str(tiny_files[onnx_key]))
    detect.runner.session = CountingSession(detect.runner.session)
    onnx_result = slice_inference(detect, image, tile=TILE, overlap=0.25, batch_size=4)
    assert detect.runner.session.batches == runs
    assert_same_detections(torch_result.pred_instances, onnx_result.pred_instances)


def test_api_and_sliced_detector_agree(tiny_files, tiny_model, image):
    """One sliced loop: the API on a BGR array and ``RetinaSlicedDetector.test_step`` on the
    pipeline's tensor give the same detections (the tiny config's test resize is scale 1)."""
    cfg = Config.fromfile(str(tiny_files['config']))
    cfg.model.update(type='RetinaSlicedDetector',
                     slice_cfg=dict(tile=TILE, overlap=0.25, batch_size=4))
    sliced = MODELS.build(cfg.model)
    sliced.load_state_dict(tiny_model.state_dict(), strict=True)
    sliced.eval()
    sample = DetDataSample(metainfo=dict(img_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT, WIDTH),
                                         scale_factor=(1.0, 1.0)))
    inputs = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    detector = sliced.test_step(dict(inputs=[inputs], data_samples=[sample]))[0]
    api = slice_inference(tiny_model, image, tile=TILE, overlap=0.25, batch_size=4)
    assert_same_detections(detector.pred_instances, api.pred_instances)


def test_infer_command_tiles_with_onnx(tiny_files, image, tmp_path):
    """``mmdet-retina infer --onnx F --tile H W`` gives the PyTorch path's detections."""
    import cv2

    from mmdet_retina_plugin.tools.infer import run_inference
    path = tmp_path / 'large.png'
    cv2.imwrite(str(path), image)
    options = dict(score_thr=0.0, tile=(TILE, TILE), overlap=0.25, tile_batch=4)
    torch_record = run_inference(path, tiny_files['config'], tiny_files['checkpoint'],
                                 tmp_path / 'torch', device='cpu', **options)[0]
    onnx_record = run_inference(path, None, None, tmp_path / 'onnx', onnx=tiny_files['onnx'],
                                **options)[0]
    as_dets = [InstanceData(bboxes=torch.tensor(r['bboxes']), scores=torch.tensor(r['scores']),
                            labels=torch.tensor(r['labels'])) for r in (torch_record, onnx_record)]
    assert_same_detections(*as_dets)
