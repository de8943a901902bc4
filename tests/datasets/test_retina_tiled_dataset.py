"""RetinaTiledDataset: windows indexed once, cropped lazily, boxes moved into each window."""
import json

import cv2
import mmcv
import numpy as np
import pytest

from mmdet_retina_plugin.datasets import RetinaTiledDataset
from mmdet_retina_plugin.datasets.retina_tiled_dataset import window_instances
from mmdet_retina_plugin.datasets.transforms import RetinaCropTile

CLASSES = ('a', 'b')
PIPELINE = [dict(type='LoadImageFromFile'), dict(type='RetinaCropTile'),
            dict(type='LoadAnnotations', with_bbox=True), dict(type='PackDetInputs')]


def write_coco(root, images):
    """Writes noise PNGs and a COCO file; ``images``: ``(height, width, [(x, y, w, h, cat)])``."""
    (root / 'img').mkdir(parents=True, exist_ok=True)
    coco = dict(images=[], annotations=[],
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)])
    rng = np.random.default_rng(0)
    for i, (height, width, boxes) in enumerate(images):
        name = f'{i}.png'
        if height > 0 and width > 0:
            cv2.imwrite(str(root / 'img' / name), rng.integers(0, 256, (height, width, 3),
                                                               dtype=np.uint8))
        coco['images'].append(dict(id=i + 1, file_name=name, height=height, width=width))
        for x, y, w, h, cat in boxes:
            coco['annotations'].append(dict(id=len(coco['annotations']) + 1, image_id=i + 1,
                                            category_id=cat, bbox=[x, y, w, h], area=w * h,
                                            iscrowd=0))
    (root / 'ann.json').write_text(json.dumps(coco))
    return dict(type='CocoDataset', data_root=str(root) + '/', ann_file='ann.json',
                data_prefix=dict(img='img/'), metainfo=dict(classes=CLASSES),
                filter_cfg=dict(filter_empty_gt=False))


# One 100 x 100 image, tile 50 without overlap: windows (0,0) (50,0) (0,50) (50,50).
# A: inside the first window; B: across x=50, half on each side; C: across x=50, 6 of its 10 px
# wide left of the border (60 %) and 4 right of it (40 %).
BOXES = [(10, 10, 20, 20, 1), (40, 5, 20, 10, 2), (44, 70, 10, 10, 1)]


@pytest.fixture
def inner(tmp_path):
    return write_coco(tmp_path, [(100, 100, BOXES)])


def build(inner, **kwargs):
    kwargs.setdefault('empty_fraction', 1.0)
    return RetinaTiledDataset(dataset=inner, tile=50, overlap=0.0, pipeline=PIPELINE, **kwargs)


def boxes_by_window(ds):
    """``window -> [(bbox, label, ignore_flag)]`` over the dataset's samples."""
    return {ds.get_data_info(i)['tile_window']:
            [(inst['bbox'], inst['bbox_label'], inst['ignore_flag'])
             for inst in ds.get_data_info(i)['instances']] for i in range(len(ds))}


def test_boxes_are_shifted_and_clipped_to_each_window(inner):
    ds = build(inner, min_visible=0.5)
    assert boxes_by_window(ds) == {
        (0, 0, 50, 50): [([10.0, 10.0, 30.0, 30.0], 0, 0), ([40.0, 5.0, 50.0, 15.0], 1, 0)],
        (50, 0, 100, 50): [([0.0, 5.0, 10.0, 15.0], 1, 0)],
        (0, 50, 50, 100): [([44.0, 20.0, 50.0, 30.0], 0, 0)],
        (50, 50, 100, 100): []}
    assert ds.metainfo['classes'] == CLASSES
    info = ds.get_data_info(1)
    assert (info['width'], info['height'], info['tile_image_size']) == (50, 50, (100, 100))


@pytest.mark.parametrize('min_visible, left, right', [
    (0.4, True, True), (0.41, True, False), (0.6, True, False), (0.61, False, False)])
def test_min_visible_on_both_sides_of_the_limit(inner, min_visible, left, right):
    found = boxes_by_window(build(inner, min_visible=min_visible))
    assert (([44.0, 20.0, 50.0, 30.0], 0, 0) in found[(0, 50, 50, 100)]) == left
    assert (([0.0, 20.0, 4.0, 30.0], 0, 0) in found[(50, 50, 100, 100)]) == right


def test_partial_ignore_keeps_the_clipped_part_as_ignored(inner):
    ds = build(inner, min_visible=0.5, partial='ignore')
    assert boxes_by_window(ds)[(50, 50, 100, 100)] == [([0.0, 20.0, 4.0, 30.0], 0, 1)]
    # the window holds only an ignored box: it is an empty window
    assert ds.tile_stats['empty_windows'] == 1
    sample = ds[3]['data_samples']
    assert len(sample.gt_instances) == 0
    assert sample.ignored_instances.bboxes.tensor.tolist() == [[0.0, 20.0, 4.0, 30.0]]


def test_an_ignored_input_box_stays_ignored():
    instances = [dict(bbox=[0, 0, 10, 10], bbox_label=0, ignore_flag=1)]
    boxes, kept = window_instances(instances, (5, 5, 20, 20), 0.5, 'drop')
    assert boxes == [dict(bbox=[0.0, 0.0, 5.0, 5.0], bbox_label=0, ignore_flag=1)]
    assert kept.tolist() == [False]


def test_windows_are_indexed_once_without_reading_images(inner, monkeypatch):
    reads = []
    real = mmcv.imfrombytes
    monkeypatch.setattr(mmcv, 'imfrombytes', lambda *a, **k: reads.append(1) or real(*a, **k))
    ds = build(inner)
    assert reads == [] and len(ds) == 4
    again = build(inner)
    assert [ds.get_data_info(i) for i in range(4)] == [again.get_data_info(i) for i in range(4)]
    image = cv2.imread(ds.get_data_info(0)['img_path'])
    for i in range(len(ds)):
        out = ds[i]
        x1, y1, x2, y2 = ds.get_data_info(i)['tile_window']
        assert len(reads) == i + 1  # one decode per sample, at load time
        assert tuple(out['data_samples'].img_shape) == (50, 50)
        np.testing.assert_array_equal(out['inputs'].permute(1, 2, 0).numpy(),
                                      image[y1:y2, x1:x2])


def test_kept_fraction_of_empty_windows_is_fixed_by_seed(tmp_path):
    # 10 x 10 = 100 windows of 20 px, one holding a box; the second image has no boxes at all
    inner = write_coco(tmp_path, [(200, 200, [(25, 25, 10, 10, 1)]), (100, 200, [])])

    def windows(**kwargs):
        ds = RetinaTiledDataset(dataset=inner, tile=20, overlap=0.0, pipeline=PIPELINE,
                                **kwargs)
        return [(ds.get_data_info(i)['img_id'], ds.get_data_info(i)['tile_window'])
                for i in range(len(ds))]

    first = windows(empty_fraction=0.1, seed=0)
    assert len(first) == 1 + 15  # 149 empty windows (99 + 50), round(14.9) kept
    assert (1, (20, 20, 40, 40)) in first
    assert windows(empty_fraction=0.1, seed=0) == first
    assert windows(empty_fraction=0.1, seed=1) != first
    assert windows(empty_fraction=0.0) == [(1, (20, 20, 40, 40))]
    assert len(windows(empty_fraction=1.0)) == 150


def test_boxes_outside_the_image_are_clipped_counted_and_warned(tmp_path):
    # D reaches 10 px beyond the right and bottom borders: a quarter of it is inside
    inner = write_coco(tmp_path, [(100, 100, [(90, 90, 20, 20, 1), (10, 10, 20, 20, 2)])])
    with pytest.warns(UserWarning, match='1 boxes reach beyond their image.*1 boxes are kept '
                                         'in no window'):
        ds = RetinaTiledDataset(dataset=inner, tile=50, overlap=0.0, min_visible=0.5,
                                pipeline=PIPELINE)
    assert ds.tile_stats['boxes_outside_image'] == 1
    assert ds.tile_stats['boxes_in_no_window'] == 1
    with pytest.warns(UserWarning, match='1 boxes reach beyond'):
        ds = RetinaTiledDataset(dataset=inner, tile=50, overlap=0.0, min_visible=0.25,
                                pipeline=PIPELINE, empty_fraction=0.0)
    assert boxes_by_window(ds)[(50, 50, 100, 100)] == [([40.0, 40.0, 50.0, 50.0], 0, 0)]


def test_zero_size_image_names_the_file(tmp_path):
    inner = write_coco(tmp_path, [(100, 100, []), (0, 100, [])])
    with pytest.raises(ValueError, match=r"1\.png.*height=0"):
        RetinaTiledDataset(dataset=inner, tile=50, pipeline=PIPELINE)


@pytest.mark.parametrize('kwargs, field', [
    (dict(min_visible=0.0), 'min_visible'), (dict(min_visible=1.5), 'min_visible'),
    (dict(partial='keep'), 'partial'), (dict(empty_fraction=-0.1), 'empty_fraction'),
    (dict(tile=0), 'tile'), (dict(tile=(50, 50, 3)), 'tile'), (dict(overlap=1.0), 'overlap'),
    (dict(pipeline=PIPELINE[:1] + PIPELINE[2:]), 'RetinaCropTile')])
def test_bad_arguments_raise_naming_the_field(inner, kwargs, field):
    args = dict(dataset=inner, tile=50, pipeline=PIPELINE)
    with pytest.raises(ValueError, match=field):
        RetinaTiledDataset(**dict(args, **kwargs))


def test_crop_rejects_an_image_of_another_size_than_its_annotation(tmp_path):
    inner = write_coco(tmp_path, [(100, 100, BOXES)])
    cv2.imwrite(str(tmp_path / 'img' / '0.png'), np.zeros((90, 100, 3), np.uint8))
    ds = build(inner, min_visible=0.5)
    with pytest.raises(ValueError, match=r'0\.png.*\(90, 100\)'):
        ds[0]


def test_crop_needs_a_tiled_sample():
    with pytest.raises(ValueError, match='RetinaTiledDataset.*x.png'):
        RetinaCropTile()(dict(img=np.zeros((4, 4, 3), np.uint8), img_path='x.png'))
