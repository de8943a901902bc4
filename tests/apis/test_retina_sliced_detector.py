"""``RetinaSlicedDetector``: the plain detector's parameters, sliced predictions in full-image
pixels, the same detections from ``test_step`` (raw tiles) and ``predict`` (preprocessed)."""
import copy

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.registry import init_default_scope
from tiny_detector import tiny_config

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.utils.tiling import tile_windows

# tiles of 128 px: the head's GroupNorm needs P6 (stride 64) larger than 1x1
HEIGHT, WIDTH, TILE = 160, 256, 128


def _model_cfg():
    cfg = tiny_config().model
    # a random head scores ~prior_prob: keep a few boxes per tile so there is something to map
    cfg.test_cfg.score_thr = 0.0
    cfg.test_cfg.max_per_img = 5
    return cfg


def _build(slice_cfg=None):
    init_default_scope('mmdet')
    torch.manual_seed(0)
    plain = MODELS.build(_model_cfg())
    plain.init_weights()
    sliced_cfg = _model_cfg()
    sliced_cfg.update(type='RetinaSlicedDetector', slice_cfg=slice_cfg or {})
    sliced = MODELS.build(sliced_cfg)
    sliced.load_state_dict(plain.state_dict(), strict=True)
    return plain.eval(), sliced.eval()


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8))


def _sample(height=HEIGHT, width=WIDTH, scale_factor=(1.0, 1.0)):
    return DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                       scale_factor=scale_factor))


def _plain_on(plain, image):
    """The plain detector's detections on one uint8 ``(3, h, w)`` image, in its pixels."""
    data = dict(inputs=[image], data_samples=[_sample(*image.shape[1:])])
    with torch.no_grad():
        return plain.test_step(data)[0].pred_instances


def test_parameters_are_the_plain_detectors():
    plain, sliced = _build()
    assert list(sliced.state_dict()) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(sliced.state_dict()[key], value), key


def test_one_window_equals_the_plain_detector():
    plain, sliced = _build(dict(tile=(HEIGHT, WIDTH), cut_ios_thr=None))
    image = _image()
    expected = _plain_on(plain, image)
    got = sliced.test_step(dict(inputs=[image], data_samples=[_sample()]))[0].pred_instances
    order = expected.scores.argsort(descending=True, stable=True)
    torch.testing.assert_close(got.bboxes, expected.bboxes[order])
    torch.testing.assert_close(got.scores, expected.scores[order])
    assert torch.equal(got.labels, expected.labels[order])


def test_boxes_are_tile_boxes_moved_to_full_image_pixels():
    """Without merging thresholds that drop anything (IoU 1, no cut rule), every sliced box is a
    box the plain detector finds on a window, shifted by the window's corner."""
    plain, sliced = _build(dict(tile=TILE, overlap=0.25, batch_size=3, merge_iou_thr=1.0,
                                cut_ios_thr=None))
    image = _image(1)
    windows = tile_windows(HEIGHT, WIDTH, TILE, 0.25)
    assert len(windows) > 4
    shifted = []
    for x1, y1, x2, y2 in windows:
        dets = _plain_on(plain, image[:, y1:y2, x1:x2].contiguous())
        shifted.append(dets.bboxes + torch.tensor([x1, y1, x1, y1], dtype=torch.float32))
    shifted = torch.cat(shifted)
    got = sliced.test_step(dict(inputs=[image], data_samples=[_sample()]))[0].pred_instances
    assert len(got) > 0 and len(got) <= len(shifted)
    distance = (got.bboxes[:, None] - shifted[None]).abs().amax(-1).amin(1)
    assert distance.max() < 1e-3
    # some boxes come from windows away from the origin: really shifted
    assert (got.bboxes[:, 0] >= TILE).any() and (got.bboxes[:, 1] >= HEIGHT - TILE).any()


def test_rescale_by_scale_factor_and_predict_path():
    _, sliced = _build(dict(tile=TILE, overlap=0.25, batch_size=2))
    image = _image(2)
    raw = sliced.test_step(dict(inputs=[image], data_samples=[_sample()]))[0].pred_instances
    half = sliced.test_step(dict(inputs=[image], data_samples=[_sample(scale_factor=(0.5, 0.5))])
                            )[0].pred_instances
    torch.testing.assert_close(half.bboxes, raw.bboxes * 2)
    # predict() on the preprocessed image gives what test_step gives from the raw image
    data = sliced.data_preprocessor(dict(inputs=[image], data_samples=[_sample()]), False)
    with torch.no_grad():
        pre = sliced.predict(data['inputs'], data['data_samples'])[0].pred_instances
    torch.testing.assert_close(pre.bboxes, raw.bboxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(pre.scores, raw.scores, atol=1e-5, rtol=1e-4)


def test_full_image_pass_is_merged_in():
    _, sliced = _build(dict(tile=TILE, overlap=0.25, full_image=True,
                            full_image_scale=(128, 96), merge_iou_thr=1.0, cut_ios_thr=None))
    _, tiles_only = _build(dict(tile=TILE, overlap=0.25, merge_iou_thr=1.0, cut_ios_thr=None))
    image = _image(3)
    with_full = sliced.test_step(dict(inputs=[image], data_samples=[_sample()]))[0]
    without = tiles_only.test_step(dict(inputs=[image], data_samples=[_sample()]))[0]
    # the whole-image pass (downscaled to 128x80) adds its max_per_img (5) boxes
    assert len(with_full.pred_instances) == len(without.pred_instances) + 5


@pytest.mark.parametrize('slice_cfg, match', [
    (dict(tile=0), 'tile'), (dict(overlap=1.0), 'overlap'), (dict(batch_size=0), 'batch_size'),
    (dict(merge='soft'), 'merge'), (dict(merge_iou_thr=1.5), 'merge_iou_thr'),
    (dict(tiles=4), 'unknown keys'), (dict(full_image_scale=(0, 5)), 'full_image_scale')])
def test_bad_slice_cfg(slice_cfg, match):
    cfg = copy.deepcopy(_model_cfg())
    cfg.update(type='RetinaSlicedDetector', slice_cfg=slice_cfg)
    init_default_scope('mmdet')
    with pytest.raises(ValueError, match=match):
        MODELS.build(cfg)


def test_runner_tests_full_images_tile_by_tile(tmp_path):
    """``Runner.test`` (what ``mim test`` runs) with the plain detector's checkpoint: the test
    loop feeds full 192x256 images, the detector slices them, CocoMetric scores the boxes."""
    from mmengine.runner import Runner
    from tiny_detector import tiny_data
    tiny_data(str(tmp_path / 'data'), 0, 2, image_size=(192, 256))
    cfg = tiny_config(str(tmp_path / 'data') + '/', work_dir=str(tmp_path / 'work'))
    cfg.model.test_cfg.score_thr = 0.0
    init_default_scope('mmdet')
    plain = MODELS.build(cfg.model)
    plain.init_weights()
    torch.save(dict(state_dict=plain.state_dict()), tmp_path / 'plain.pth')
    cfg.model.update(type='RetinaSlicedDetector',
                     slice_cfg=dict(tile=TILE, overlap=0.25, batch_size=2))
    cfg.load_from = str(tmp_path / 'plain.pth')
    runner = Runner.from_cfg(cfg)
    outputs = []
    test_step = runner.model.test_step

    def recording_test_step(data):
        results = test_step(data)
        outputs.extend(results)
        return results
    runner.model.test_step = recording_test_step
    metrics = runner.test()
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0
    assert len(outputs) == 2 and all(o.ori_shape == (192, 256) for o in outputs)
    boxes = torch.cat([o.pred_instances.bboxes for o in outputs])
    assert (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 192).all() and (boxes >= 0).all()
    assert (boxes[:, 0] > TILE).any()  # from the second column of tiles
    for key, value in plain.state_dict().items():  # the checkpoint loaded
        torch.testing.assert_close(runner.model.state_dict()[key], value)
