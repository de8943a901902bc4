"""The synthetic shapes generator: determinism, COCO validity, and the variety the demo needs."""
import filecmp
import json
import math
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from mmdet_retina_plugin.datasets import synthetic_shapes
from mmdet_retina_plugin.datasets.synthetic_shapes import CLASSES, make_dataset


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    """40 train / 10 val images at 256 px: enough for every size range and class to occur."""
    root = str(tmp_path_factory.mktemp('shapes'))
    return root, make_dataset(root, num_train=40, num_val=10, image_size=(256, 256), seed=0)


def test_returned_paths_and_layout(shapes):
    root, paths = shapes
    assert paths['classes'] == CLASSES
    assert paths['train_ann'] == os.path.join(root, 'annotations', 'train.json')
    assert paths['val_ann'] == os.path.join(root, 'annotations', 'val.json')
    assert sorted(os.listdir(paths['train_img'])) == [f'{i:06d}.png' for i in range(40)]
    assert sorted(os.listdir(paths['val_img'])) == [f'{i:06d}.png' for i in range(10)]


@pytest.mark.parametrize('split,num', [('train', 40), ('val', 10)])
def test_coco_annotations_are_valid(shapes, split, num):
    _, paths = shapes
    coco = COCO(paths[f'{split}_ann'])
    cats = coco.loadCats(coco.getCatIds())
    assert [(c['id'], c['name']) for c in cats] == [(i + 1, n) for i, n in enumerate(CLASSES)]
    assert len(coco.getImgIds()) == num
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(os.path.join(paths[f'{split}_img'], img['file_name']))
        assert pixels.shape == (img['height'], img['width'], 3) == (256, 256, 3)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
            x, y, w, h = ann['bbox']
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0
            assert x + w <= img['width'] and y + h <= img['height']
            assert ann['area'] == w * h
            assert ann['iscrowd'] == 0


def test_variety(shapes):
    """Every class, COCO's small / medium / large ranges, empty images and overlaps occur."""
    _, paths = shapes
    coco = json.load(open(paths['train_ann']))
    anns = coco['annotations']
    assert {a['category_id'] for a in anns} == set(range(1, len(CLASSES) + 1))
    areas = np.array([a['area'] for a in anns])
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any()
    assert (areas >= 96 ** 2).any()
    per_image = {}
    for a in anns:
        per_image.setdefault(a['image_id'], []).append(a['bbox'])
    assert len(per_image) < len(coco['images'])  # some images hold no shape

    def overlap(a, b):
        return (min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0])
                and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1]))
    assert any(overlap(a, b) for boxes in per_image.values()
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


@pytest.mark.parametrize('name,lo,hi', [
    # hand-computed areas for longest side (circumscribed diameter) s = 2r = 60
    ('circle', math.pi * 30 ** 2, math.pi * 30 ** 2),
    ('square', 2 * 30 ** 2, 2 * 30 ** 2),  # diagonal 2r: side r*sqrt(2)
    ('triangle', 3 * math.sqrt(3) / 4 * 30 ** 2, 3 * math.sqrt(3) / 4 * 30 ** 2),
    # two 2L x 2a bars, half-width a in [0.3r, 0.45r], corners on the circle (L^2 + a^2 = r^2),
    # overlapping in a 2a x 2a square
    ('cross', 8 * math.sqrt(30 ** 2 - 9 ** 2) * 9 - 4 * 9 ** 2,
     8 * math.sqrt(30 ** 2 - 13.5 ** 2) * 13.5 - 4 * 13.5 ** 2),
    # inner radius in [0.45r, 0.7r]
    ('ring', math.pi * (30 ** 2 - 21 ** 2), math.pi * (30 ** 2 - 13.5 ** 2)),
])
def test_shape_geometry(name, lo, hi):
    for seed in range(5):
        mask = synthetic_shapes._shape_mask(np.random.default_rng(seed), CLASSES.index(name),
                                            128, 128, 60.0)
        # OpenCV fills boundary pixels too: about half a perimeter more (< 10% at this size)
        assert 0.95 * lo <= mask.sum() <= 1.1 * hi
        ys, xs = np.nonzero(mask)
        # fully inside the image, and no wider than the circumscribed circle
        assert xs.max() - xs.min() + 1 <= 62 and ys.max() - ys.min() + 1 <= 62


def test_boxes_are_tight_around_visible_pixels(tmp_path):
    """With ``min_visible=1`` no shape is occluded, so a one-shape image's box must be the
    extent of a mask of the drawn class: at most the circumscribed size, and not much less."""
    paths = make_dataset(str(tmp_path), num_train=20, num_val=0, image_size=(128, 128), seed=3,
                         max_objects=1, object_size=(40, 40), empty_prob=0.0, min_visible=1.0)
    anns = json.load(open(paths['train_ann']))['annotations']
    assert len(anns) == 20
    for a in anns:
        w, h = a['bbox'][2:]
        assert max(w, h) <= 42 and min(w, h) >= 40 * 0.5  # a triangle is the flattest: 0.75*s


def test_same_bytes_on_every_run(tmp_path):
    a = make_dataset(str(tmp_path / 'a'), num_train=5, num_val=3, image_size=(96, 128), seed=7)
    b = make_dataset(str(tmp_path / 'b'), num_train=5, num_val=3, image_size=(96, 128), seed=7)
    files = _files(str(tmp_path / 'a'))
    assert files == _files(str(tmp_path / 'b'))
    match, mismatch, errors = filecmp.cmpfiles(str(tmp_path / 'a'), str(tmp_path / 'b'), files,
                                               shallow=False)
    assert not mismatch and not errors and len(match) == len(files) == 5 + 3 + 3
    assert a['classes'] == b['classes']
    c = make_dataset(str(tmp_path / 'c'), num_train=5, num_val=3, image_size=(96, 128), seed=8)
    assert not filecmp.cmp(os.path.join(a['train_img'], '000000.png'),
                           os.path.join(c['train_img'], '000000.png'), shallow=False)


def test_images_do_not_depend_on_the_split_size(tmp_path):
    small = make_dataset(str(tmp_path / 's'), num_train=3, num_val=1, image_size=(64, 64))
    large = make_dataset(str(tmp_path / 'l'), num_train=6, num_val=2, image_size=(64, 64))
    for i in range(3):
        assert filecmp.cmp(os.path.join(small['train_img'], f'{i:06d}.png'),
                           os.path.join(large['train_img'], f'{i:06d}.png'), shallow=False)
    small_anns = json.load(open(small['train_ann']))['annotations']
    large_anns = [a for a in json.load(open(large['train_ann']))['annotations']
                  if a['image_id'] <= 3]
    assert small_anns == large_anns


def test_cli_writes_the_same_files(tmp_path):
    make_dataset(str(tmp_path / 'api'), num_train=3, num_val=2, image_size=(64, 80), seed=1)
    synthetic_shapes.main(['--out', str(tmp_path / 'cli'), '--num-train', '3', '--num-val', '2',
                           '--image-size', '64', '80', '--seed', '1'])
    files = _files(str(tmp_path / 'api'))
    _, mismatch, errors = filecmp.cmpfiles(str(tmp_path / 'api'), str(tmp_path / 'cli'), files,
                                           shallow=False)
    assert files == _files(str(tmp_path / 'cli')) and not mismatch and not errors


@pytest.mark.parametrize('kwargs,field', [
    (dict(num_train=-1), 'num_train'),
    (dict(num_val=1.5), 'num_val'),
    (dict(image_size=(16, 64)), 'image_size'),
    (dict(object_size=(2, 10)), 'object_size'),
    (dict(object_size=(20, 10)), 'object_size'),
    (dict(max_objects=0), 'max_objects'),
    (dict(empty_prob=1.5), 'empty_prob'),
    (dict(min_visible=0.0), 'min_visible'),
])
def test_invalid_arguments_raise(tmp_path, kwargs, field):
    args = dict(root=str(tmp_path), num_train=1, num_val=1, image_size=(64, 64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        make_dataset(**args)
