"""``mmdet-retina export`` / ``infer --onnx``, raw outputs, and what cannot be exported."""
import json

import cv2
import numpy as np
import pytest
import torch
from mmdet.apis import init_detector
from mmengine.config import Config

from mmdet_retina_plugin.deploy import OnnxRetinaNet, export_onnx, read_metadata
from mmdet_retina_plugin.deploy.pipeline import preprocess
from mmdet_retina_plugin.tools.cli import main
from mmdet_retina_plugin.utils.errors import RetinaConfigError
from tests.deploy.conftest import assert_raw_outputs_equal, textured_image


def test_no_postprocess_outputs_equal_head(demo_detector, tmp_path):
    out = tmp_path / 'raw.onnx'
    main(['export', str(demo_detector['config']), str(demo_detector['checkpoint']), '--out',
          str(out), '--no-postprocess', '--input-size', '96', '128'])
    meta = read_metadata(out)
    assert meta['postprocess'] is False and meta['input_size'] == [96, 128]
    assert meta['winograd_convs'] == []  # the demo's 64 channels are below the threshold
    assert meta['classes'] == [f'class_{i}' for i in range(5)]
    image = textured_image(90, 120, seed=3)  # padded to the fixed 96 x 128 input
    raw = OnnxRetinaNet(out).raw([image])
    model = init_detector(str(demo_detector['config']), str(demo_detector['checkpoint']),
                          device='cpu')
    batch, _, _ = preprocess([image], meta, (96, 128))
    data = model.data_preprocessor(dict(inputs=[torch.from_numpy(image).permute(2, 0, 1)]))
    # the graph's input, normalised, is the preprocessor's output (its padding included)
    normalised = (torch.from_numpy(batch)[:, [2, 1, 0]] - model.data_preprocessor.mean) \
        / model.data_preprocessor.std
    torch.testing.assert_close(normalised, data['inputs'], rtol=0, atol=1e-5)
    with torch.no_grad():
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(data['inputs']))
    assert_raw_outputs_equal(raw, cls_scores, bbox_preds)
    anchors = model.bbox_head.prior_generator.grid_priors([c.shape[-2:] for c in cls_scores],
                                                            device='cpu')
    np.testing.assert_array_equal(raw['anchors'], torch.cat(anchors).numpy())
    with pytest.raises(ValueError, match='postprocess'):
        OnnxRetinaNet(out).det([image])


def test_infer_onnx_draws_the_pytorch_pictures(demo_detector, tmp_path):
    img_dir = tmp_path / 'images'
    img_dir.mkdir()
    for i, (h, w) in enumerate([(96, 128), (120, 90)]):
        cv2.imwrite(str(img_dir / f'{i}.png'), textured_image(h, w, seed=20 + i))
    common = [str(img_dir), '--score-thr', '0.05']
    main(['infer', *common, '--config', str(demo_detector['config']), '--checkpoint',
          str(demo_detector['checkpoint']), '--out', str(tmp_path / 'torch'), '--device', 'cpu'])
    main(['infer', *common, '--onnx', str(demo_detector['onnx']), '--out', str(tmp_path / 'ort')])
    torch_recs = json.loads((tmp_path / 'torch' / 'predictions.json').read_text())
    ort_recs = json.loads((tmp_path / 'ort' / 'predictions.json').read_text())
    for t, o in zip(torch_recs, ort_recs):
        assert len(t['scores']) > 0 and t['labels'] == o['labels'] and t['classes'] == o['classes']
        np.testing.assert_allclose(o['bboxes'], t['bboxes'], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(o['scores'], t['scores'], rtol=0, atol=1e-4)
        source = cv2.imread(t['file'])
        drawn_t, drawn_o = cv2.imread(t['out_file']), cv2.imread(o['out_file'])
        assert drawn_o.shape == drawn_t.shape == source.shape
        assert (drawn_o != source).any() and (drawn_t != source).any()


def test_dynamic_export_needs_no_input_size(demo_detector, tmp_path):
    # the demo's test pipeline resizes by scale_factor=1.0: it fixes no size
    files = [str(demo_detector['config']), str(demo_detector['checkpoint'])]
    out = tmp_path / 'dynamic.onnx'
    main(['export', *files, '--out', str(out), '--dynamic'])
    meta = read_metadata(out)
    assert meta['dynamic'] is True and meta['input_size'] is None
    # the head's test_cfg, in mmdet's layout
    cfg = Config.fromfile(files[0]).model.test_cfg
    assert meta['test_cfg'] == dict(score_thr=cfg.score_thr, nms_pre=cfg.nms_pre,
                                    min_bbox_size=cfg.min_bbox_size, nms=dict(cfg.nms),
                                    max_per_img=cfg.max_per_img)
    # any size runs, and gives the detections of the session's export (example 160 x 160)
    images = [textured_image(75, 133, seed=5), textured_image(200, 120, seed=6)]
    for ours, ref in zip(OnnxRetinaNet(out).det(images),
                         OnnxRetinaNet(demo_detector['onnx']).det(images)):
        assert len(ref['scores']) > 0
        np.testing.assert_array_equal(ours['labels'], ref['labels'])
        np.testing.assert_allclose(ours['bboxes'], ref['bboxes'], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ours['scores'], ref['scores'], rtol=0, atol=1e-6)


def test_fixed_size_export_names_the_input_size_option(demo_detector, tmp_path):
    files = [str(demo_detector['config']), str(demo_detector['checkpoint'])]
    with pytest.raises(RetinaConfigError, match='--input-size H W'):
        main(['export', *files, '--out', str(tmp_path / 'fixed.onnx')])
    assert not (tmp_path / 'fixed.onnx').exists()


@pytest.mark.parametrize('change, message', [
    (dict(nms=dict(type='soft_nms', iou_threshold=0.5)), "nms.type='soft_nms'"),
    (dict(nms=dict(type='nms', iou_threshold=0.5, offset=1)), 'nms.offset=1'),
    (dict(nms=dict(type='nms', iou_threshold=0.5, min_score=0.1)), r"options \['min_score'\]"),
    (dict(with_nms=False), 'with_nms=False'),
    (dict(min_bbox_size=2), 'min_bbox_size'),
    (dict(max_per_img=None), 'max_per_img'),
    (dict(score_thr='0.05'), 'score_thr must be a number'),
])
def test_unexportable_test_cfg_fails_at_export(demo_detector, tmp_path, change, message):
    cfg = Config.fromfile(str(demo_detector['config']))
    cfg.model.test_cfg.update(change)
    with pytest.raises(RetinaConfigError, match=message):
        export_onnx(cfg, demo_detector['checkpoint'], tmp_path / 'x.onnx', input_size=(64, 64))


def test_foreign_head_and_missing_checkpoint_fail_at_export(demo_detector, tmp_path):
    cfg = Config.fromfile(str(demo_detector['config']))
    cfg.model.bbox_head.type = 'RetinaHead'  # mmdet's, not ours
    cfg.model.bbox_head.loss_cls.type = 'FocalLoss'
    cfg.model.bbox_head.pop('avg_factor_momentum')
    with pytest.raises(ValueError, match='RetinaNetHead'):
        export_onnx(cfg, demo_detector['checkpoint'], tmp_path / 'x.onnx', input_size=(64, 64))
    with pytest.raises(ValueError, match='checkpoint not found'):
        export_onnx(demo_detector['config'], tmp_path / 'missing.pth', tmp_path / 'x.onnx')


@pytest.mark.parametrize('image, message', [
    (np.zeros((32, 32, 3), np.float32), 'dtype float32'),
    (np.zeros((32, 32), np.uint8), r'shape \(H, W, 3\)'),
    (np.zeros((32, 32, 4), np.uint8), r'shape \(H, W, 3\)'),
    ('image.png', 'numpy array'),
])
def test_runtime_rejects_non_images(demo_detector, image, message):
    with pytest.raises(ValueError, match=r'images\[1\].*' + message):
        OnnxRetinaNet(demo_detector['onnx']).det([np.zeros((32, 32, 3), np.uint8), image])
