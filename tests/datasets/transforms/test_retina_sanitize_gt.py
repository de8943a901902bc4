"""RetinaSanitizeGt and RetinaCocoDataset on hand-made annotations."""
import json
import logging

import numpy as np
import pytest
import torch
from mmdet.datasets.transforms import LoadAnnotations
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmdet.structures.mask import BitmapMasks
from mmengine.logging import MMLogger

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.datasets import RetinaCocoDataset, RetinaSanitizeGt


@pytest.fixture
def warnings_log():
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage()) if r.levelno >= logging.WARNING \
        else None
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def sample(boxes, img=None):
    n = len(boxes)
    return dict(img=np.zeros((40, 50, 3), np.uint8) if img is None else img, img_shape=(40, 50),
                img_id=7, img_path='x/7.png',
                gt_bboxes=HorizontalBoxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4)),
                gt_bboxes_labels=np.arange(n, dtype=np.int64),
                gt_ignore_flags=np.zeros(n, bool),
                gt_masks=BitmapMasks(np.arange(n)[:, None, None] * np.ones((n, 40, 50), np.uint8),
                                     40, 50))


def test_drops_clips_and_keeps_alignment(warnings_log):
    boxes = [[1, 1, 10, 10],      # fine
             [5, 5, 5, 20],       # zero width
             [30, 10, 20, 20],    # negative width
             [-10, 5, 20, 15],    # partly outside: clipped to x1=0
             [60, 0, 70, 10],     # fully right of the 50 px wide image
             [10, 39.5, 20, 60]]  # 0.5 px visible: below min_size=1
    out = TRANSFORMS.build(dict(type='RetinaSanitizeGt'))(sample(boxes))
    assert out['gt_bboxes'].tensor.tolist() == [[1, 1, 10, 10], [0, 5, 20, 15]]
    assert out['gt_bboxes_labels'].tolist() == [0, 3]
    assert out['gt_ignore_flags'].tolist() == [False, False]
    assert [int(m.max()) for m in out['gt_masks'].masks] == [0, 3]
    assert len(warnings_log) == 1
    assert 'dropped 4 of 6' in warnings_log[0] and 'img_id=7, img_path=x/7.png' in warnings_log[0]


def test_numpy_boxes_and_no_clip():
    out = RetinaSanitizeGt(min_size=0, clip=False)(
        dict(img=np.zeros((4, 4, 3), np.uint8), img_shape=(4, 4),
             gt_bboxes=np.array([[-2, 0, 2, 2], [1, 1, 1, 3]], np.float32)))
    assert out['gt_bboxes'].tolist() == [[-2, 0, 2, 2]] and out['gt_bboxes'].dtype == np.float32


def test_all_boxes_dropped_leaves_empty_sample():
    out = RetinaSanitizeGt()(sample([[5, 5, 5, 5]]))
    assert out['gt_bboxes'].tensor.shape == (0, 4) and out['gt_bboxes_labels'].shape == (0,)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_box_raises_naming_image(bad):
    with pytest.raises(ValueError, match=r'rows \[1\].*img_id=7, img_path=x/7.png'):
        RetinaSanitizeGt()(sample([[1, 1, 5, 5], [1, bad, 5, 5]]))


def test_non_finite_float_image_raises():
    img = np.zeros((40, 50, 3), np.float32)
    img[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match='NaN/Inf pixels: img_id=7'):
        RetinaSanitizeGt()(sample([[1, 1, 5, 5]], img=img))


@pytest.mark.parametrize('min_size', [-1, float('nan'), '1'])
def test_invalid_min_size(min_size):
    with pytest.raises(ValueError, match='min_size'):
        RetinaSanitizeGt(min_size=min_size)


def _coco(tmp_path, anns):
    ann = dict(images=[dict(id=1, file_name='a.png', width=50, height=40),
                       dict(id=2, file_name='b.png', width=50, height=40)],
               annotations=[dict(id=i + 1, image_id=1, category_id=1, bbox=b, area=100,
                                 iscrowd=0) for i, b in enumerate(anns)],
               categories=[dict(id=1, name='circle')])
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(ann))
    return RetinaCocoDataset(ann_file=str(path), data_prefix=dict(img=str(tmp_path)),
                             metainfo=dict(classes=('circle',)),
                             filter_cfg=dict(filter_empty_gt=False), pipeline=[],
                             lazy_init=False)


def test_coco_dataset_warns_and_keeps_empty_images(tmp_path, warnings_log):
    ds = _coco(tmp_path, [[1, 1, 10, 10], [5, 5, 0, 10], [60, 5, 5, 5]])
    assert len(ds) == 2  # image 2 has no annotation at all and stays
    assert [len(ds.get_data_info(i)['instances']) for i in range(2)] == [1, 0]
    assert any('skipping 2 degenerate' in m and 'img_id=1, file_name=a.png' in m
               for m in warnings_log)


def test_coco_dataset_nan_bbox_raises(tmp_path):
    # mmdet's CocoDataset would silently drop this box: max(0, nan) == 0 in Python
    with pytest.raises(ValueError, match=r'invalid bbox \[1, nan, 5, 5\].*img_id=1'):
        _coco(tmp_path, [[1, float('nan'), 5, 5]])


def test_pipeline_position_after_load_annotations(tmp_path):
    """Works on LoadAnnotations' real output (HorizontalBoxes, labels, ignore flags)."""
    results = dict(img=np.zeros((40, 50, 3), np.uint8), img_shape=(40, 50), img_id=1,
                   instances=[dict(bbox=[1, 1, 10, 10], bbox_label=0, ignore_flag=0),
                              dict(bbox=[3, 3, 3, 9], bbox_label=1, ignore_flag=0)])
    out = RetinaSanitizeGt()(LoadAnnotations(with_bbox=True)(results))
    assert out['gt_bboxes'].tensor.tolist() == [[1, 1, 10, 10]]
    assert out['gt_bboxes_labels'].tolist() == [0]
