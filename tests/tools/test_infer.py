"""``mmdet-retina infer`` with a randomly initialised tiny RetinaNet checkpoint."""
import json

import cv2
import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.registry import init_default_scope
from tiny_detector import tiny_config, tiny_data

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.tools import infer


@pytest.fixture(scope='module')
def tiny_detector(tmp_path_factory):
    """(image folder, config path, checkpoint path, classes) of a random tiny RetinaNet."""
    root = tmp_path_factory.mktemp('infer')
    data = tiny_data(str(root / 'data'), 0, 2, image_size=(64, 96))
    cfg = tiny_config(str(root / 'data') + '/')
    # a random head scores ~prior_prob: keep every box so there is something to draw
    cfg.model.test_cfg.score_thr = 0.0
    cfg.model.test_cfg.max_per_img = 5
    config = root / 'tiny.py'
    cfg.dump(str(config))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = root / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=data['classes']))), checkpoint)
    return data['val_img'], config, checkpoint, data['classes']


def test_infer_draws_pngs(tiny_detector, tmp_path, capsys):
    from mmdet_retina_plugin.tools.cli import main
    img_dir, config, checkpoint, classes = tiny_detector
    out = tmp_path / 'vis'
    main(['infer', img_dir, '--config', str(config), '--checkpoint', str(checkpoint),
          '--out', str(out), '--score-thr', '0.0', '--device', 'cpu'])
    records = json.loads((out / 'predictions.json').read_text())
    assert len(records) == 2
    assert '5 detections >= 0' in capsys.readouterr().out
    for r in records:
        src = cv2.imread(r['file'])
        drawn = cv2.imread(r['out_file'])
        assert r['out_file'].endswith('.png') and drawn.shape == src.shape == (64, 96, 3)
        assert r['classes'] == list(classes)
        assert len(r['scores']) == 5  # max_per_img, nothing filtered at score_thr 0
        assert all(0 <= lb < len(classes) for lb in r['labels'])
        # boxes are in original image pixels, clipped to the image
        boxes = np.array(r['bboxes'])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 64).all()
        assert np.abs(drawn.astype(int) - src.astype(int)).sum() > 0  # boxes were drawn


def test_score_threshold_filters(tiny_detector, tmp_path):
    img_dir, config, checkpoint, _ = tiny_detector
    images = infer.list_images(img_dir)
    # prior 0.01 init: every score is far below 0.9
    records = infer.run_inference(images[0], config, checkpoint, tmp_path, score_thr=0.9,
                                  device='cpu')
    assert len(records) == 1 and records[0]['scores'] == []
    drawn = cv2.imread(records[0]['out_file'])
    assert np.array_equal(drawn, cv2.imread(str(images[0])))  # nothing above 0.9 to draw


def test_invalid_inputs(tmp_path):
    with pytest.raises(ValueError, match='img_or_dir'):
        infer.list_images(tmp_path / 'missing.png')
    with pytest.raises(ValueError, match='img_or_dir has no images'):
        infer.list_images(tmp_path)
    with pytest.raises(ValueError, match='score_thr'):
        infer.run_inference(tmp_path, 'cfg.py', 'ckpt.pth', tmp_path, score_thr=1.5)


def test_infer_tiles_boxes_in_full_image_pixels(tiny_detector, tmp_path):
    """``--tile``: the sliced API's detections, drawn on the full image."""
    from mmdet.apis import init_detector

    from mmdet_retina_plugin.apis import slice_inference
    from mmdet_retina_plugin.tools.cli import main
    _, config, checkpoint, _ = tiny_detector
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.uniform(0, 255, (10, 14, 3)), (224, 160)).astype(np.uint8)
    path = tmp_path / 'large.png'
    cv2.imwrite(str(path), image)
    out = tmp_path / 'vis'
    main(['infer', str(path), '--config', str(config), '--checkpoint', str(checkpoint),
          '--out', str(out), '--score-thr', '0.0', '--device', 'cpu', '--tile', '128', '128',
          '--overlap', '0.25', '--tile-batch', '2', '--merge', 'greedy'])
    record = json.loads((out / 'predictions.json').read_text())[0]
    model = init_detector(str(config), str(checkpoint), device='cpu')
    expected = slice_inference(model, image, tile=128, overlap=0.25, batch_size=2,
                               merge='greedy').pred_instances
    # 4 windows of at most 5 boxes each, merged
    assert 0 < len(record['scores']) == len(expected) <= 20
    np.testing.assert_allclose(record['bboxes'], expected.bboxes.numpy(), atol=1e-4)
    assert record['labels'] == expected.labels.tolist()
    boxes = np.array(record['bboxes'])
    assert boxes[:, 2].max() > 128 or boxes[:, 3].max() > 128  # beyond the first tile
    assert cv2.imread(record['out_file']).shape == image.shape


def test_infer_tile_options_checked(tiny_detector, tmp_path):
    img_dir, config, checkpoint, _ = tiny_detector
    with pytest.raises(ValueError, match='overlap, full_image need tile'):
        infer.run_inference(img_dir, config, checkpoint, tmp_path, overlap=0.5, full_image=True)
    with pytest.raises(ValueError, match='tile_batch'):
        infer.run_inference(img_dir, config, checkpoint, tmp_path, tile=(64, 64), tile_batch=0)
    with pytest.raises(ValueError, match='tile'):
        infer.run_inference(img_dir, config, checkpoint, tmp_path, tile=(0, 64))
    with pytest.raises(ValueError, match='overlap'):
        infer.run_inference(img_dir, config, checkpoint, tmp_path, tile=(64, 64), overlap=1.0)
