"""Sliced inference on a generated large image with an oracle detector.

The oracle finds each object's visible pixels in a tile (connected components of the class
colours, as a perfect detector would see them, cut at the tile border) and misses anything
narrower than ``MIN_SIDE`` px, so some objects are missed even when seen whole. Boxes are
integers, so exact coordinates can be asserted.
"""
from typing import List

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from mmdet_retina_plugin.apis import slice_inference
from mmdet_retina_plugin.utils.tiling import tile_windows

HEIGHT, WIDTH, TILE, OVERLAP = 900, 1200, 320, 0.2
COLORS = ((0, 0, 255), (0, 255, 0), (255, 0, 0))  # BGR of classes 0, 1, 2
MIN_SIDE = 12


class ComponentOracle:
    """Detects every 8-connected region of a class colour at least ``MIN_SIDE`` px wide and
    high; the smaller the visible area, the higher the score (so cut boxes outscore whole
    ones and plain NMS would keep them)."""

    iou_thr = 0.5

    def __init__(self) -> None:
        self.batches: List[int] = []
        self.shapes: List[tuple] = []

    def __call__(self, crops: List[np.ndarray]) -> List[InstanceData]:
        self.batches.append(len(crops))
        out = []
        for crop in crops:
            self.shapes.append(crop.shape)
            boxes, labels = [], []
            for label, color in enumerate(COLORS):
                mask = np.all(crop == color, axis=-1).astype(np.uint8)
                _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
                for x, y, w, h, _ in stats[1:]:
                    if w >= MIN_SIDE and h >= MIN_SIDE:
                        boxes.append([x, y, x + w, y + h])
                        labels.append(label)
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
            out.append(InstanceData(bboxes=boxes, scores=0.9 - area / 1e4,
                                    labels=torch.tensor(labels, dtype=torch.long)))
        return out


def _place(occupied: np.ndarray, box, gap: int = 3) -> bool:
    x1, y1, x2, y2 = box
    if x1 < 0 or y1 < 0 or x2 > WIDTH or y2 > HEIGHT:
        return False
    if occupied[max(0, y1 - gap):y2 + gap, max(0, x1 - gap):x2 + gap].any():
        return False
    occupied[y1:y2, x1:x2] = True
    return True


@pytest.fixture(scope='module')
def scene():
    """A black 900x1200 image with ~200 coloured rectangles of 10..40 px: first on every inner
    tile border (centred on it), then anywhere; ``(image, boxes (N, 4), labels (N,))``."""
    rng = np.random.default_rng(0)
    occupied = np.zeros((HEIGHT, WIDTH), bool)
    windows = tile_windows(HEIGHT, WIDTH, TILE, OVERLAP)
    xs = sorted({w[0] for w in windows} | {w[2] for w in windows} - {0, WIDTH})
    ys = sorted({w[1] for w in windows} | {w[3] for w in windows} - {0, HEIGHT})
    boxes = []

    def add(cx, cy):
        w, h = rng.integers(10, 41, 2)
        box = (int(cx - w // 2), int(cy - h // 2), int(cx - w // 2 + w), int(cy - h // 2 + h))
        if _place(occupied, box):
            boxes.append(box)

    for x in xs[1:]:
        for cy in range(30, HEIGHT, 70):
            add(x, cy)
    for y in ys[1:]:
        for cx in range(35, WIDTH, 70):
            add(cx, y)
    while len(boxes) < 260:
        add(rng.integers(20, WIDTH - 20), rng.integers(20, HEIGHT - 20))
    labels = rng.integers(0, len(COLORS), len(boxes))
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        image[y1:y2, x1:x2] = COLORS[label]
    return image, torch.tensor(boxes, dtype=torch.float32), torch.from_numpy(labels)


def _match(dets: InstanceData, gt_boxes: torch.Tensor, gt_labels: torch.Tensor):
    """Indices of the gts each detection equals exactly (box and label), -1 for none."""
    same = (dets.bboxes[:, None] == gt_boxes[None]).all(-1) & \
        (dets.labels[:, None] == gt_labels[None])
    return torch.where(same.any(1), same.float().argmax(1), torch.full_like(dets.labels, -1))


def _straddling(gt_boxes: torch.Tensor) -> torch.Tensor:
    """Which gts some window cuts (they lie partly inside it)."""
    windows = torch.tensor(tile_windows(HEIGHT, WIDTH, TILE, OVERLAP), dtype=torch.float32)
    lt = torch.maximum(gt_boxes[:, None, :2], windows[None, :, :2])
    rb = torch.minimum(gt_boxes[:, None, 2:], windows[None, :, 2:])
    partly = ((rb - lt) > 0).all(-1) & ~((gt_boxes[:, None, :2] >= windows[None, :, :2]) &
                                         (gt_boxes[:, None, 2:] <= windows[None, :, 2:])).all(-1)
    return partly.any(1)


@pytest.mark.parametrize('merge', ['nms', 'greedy'])
def test_every_object_once_at_its_place(scene, merge):
    image, gt_boxes, gt_labels = scene
    assert _straddling(gt_boxes).sum() > 100  # the scene really tests the borders
    oracle = ComponentOracle()
    sliced = slice_inference(oracle, image, tile=TILE, overlap=OVERLAP, batch_size=4,
                             merge=merge).pred_instances
    whole = oracle([image])[0]  # the same detector seeing every object whole
    found_whole = set(_match(whole, gt_boxes, gt_labels).tolist())
    matched = _match(sliced, gt_boxes, gt_labels)
    # coordinates exact (every detection equals a gt), no duplicates, recall of the whole image
    assert (matched >= 0).all()
    assert len(set(matched.tolist())) == len(matched)
    assert set(matched.tolist()) == found_whole
    assert 0 < len(found_whole) < len(gt_boxes)  # the oracle does miss the smallest objects
    assert (sliced.scores[:-1] >= sliced.scores[1:]).all()


def test_without_the_cut_rule_cut_boxes_survive(scene):
    image, gt_boxes, gt_labels = scene
    plain = slice_inference(ComponentOracle(), image, tile=TILE, overlap=OVERLAP,
                            cut_ios_thr=None).pred_instances
    matched = _match(plain, gt_boxes, gt_labels)
    assert (matched < 0).sum() > 10  # cut pieces next to their whole boxes


def test_batches_and_tile_sizes_are_bounded(scene):
    image = scene[0]
    oracle = ComponentOracle()
    slice_inference(oracle, image, tile=TILE, overlap=OVERLAP, batch_size=3)
    windows = tile_windows(HEIGHT, WIDTH, TILE, OVERLAP)
    assert sum(oracle.batches) == len(windows) and max(oracle.batches) == 3
    assert set(oracle.shapes) == {(TILE, TILE, 3)}


def test_full_image_pass_adds_objects_larger_than_a_tile():
    image = np.zeros((500, 700, 3), np.uint8)
    image[50:450, 100:600] = COLORS[1]  # 400x500: wider than any 256 px tile
    oracle = ComponentOracle()
    tiles_only = slice_inference(oracle, image, tile=256, overlap=0.25).pred_instances
    assert not any(b == [100, 50, 600, 450] for b in tiles_only.bboxes.tolist())
    both = slice_inference(oracle, image, tile=256, overlap=0.25, full_image=True).pred_instances
    # the whole box from the full pass suppresses every cut piece the tiles saw
    assert both.bboxes.tolist() == [[100, 50, 600, 450]] and both.labels.tolist() == [1]
    # shrunk by 2 to fit 350 x 250 for the full pass; its box scaled back to image pixels
    oracle.shapes.clear()
    half = slice_inference(oracle, image, tile=256, overlap=0.25, full_image=True,
                           full_image_scale=(350, 250)).pred_instances
    assert oracle.shapes[-1] == (250, 350, 3)
    assert half.bboxes.tolist() == [[100, 50, 600, 450]]


def test_tile_larger_than_image_is_one_window():
    image = np.zeros((100, 150, 3), np.uint8)
    image[10:40, 20:60] = COLORS[2]
    oracle = ComponentOracle()
    out = slice_inference(oracle, image, tile=(800, 800)).pred_instances
    assert oracle.shapes == [(100, 150, 3)]
    assert out.bboxes.tolist() == [[20, 10, 60, 40]] and out.labels.tolist() == [2]


def test_image_without_objects_gives_empty_result(tmp_path):
    path = tmp_path / 'black.png'
    cv2.imwrite(str(path), np.zeros((300, 400, 3), np.uint8))
    result = slice_inference(ComponentOracle(), path, tile=128, overlap=0.1)
    assert result.img_path == str(path) and result.ori_shape == (300, 400)
    assert result.pred_instances.bboxes.shape == (0, 4)
    assert len(result.pred_instances.scores) == 0


def test_score_thr_and_max_per_img(scene):
    image = scene[0]
    oracle = ComponentOracle()
    every = slice_inference(oracle, image, tile=TILE).pred_instances
    high = slice_inference(oracle, image, tile=TILE, score_thr=0.85).pred_instances
    assert 0 < len(high) < len(every) and (high.scores >= 0.85).all()
    top = slice_inference(oracle, image, tile=TILE, max_per_img=7).pred_instances
    torch.testing.assert_close(top.scores, every.scores[:7])


@pytest.mark.parametrize('kwargs, match', [
    (dict(tile=0), 'tile'), (dict(tile=(100, 100, 3)), 'tile'), (dict(overlap=1.0), 'overlap'),
    (dict(overlap=-0.1), 'overlap'), (dict(batch_size=0), 'batch_size'),
    (dict(merge='wbf'), 'merge'), (dict(merge_metric='giou'), 'merge_metric'),
    (dict(score_thr=2.0), 'score_thr'), (dict(max_per_img=0), 'max_per_img')])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        slice_inference(ComponentOracle(), np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_bad_images(tmp_path):
    oracle = ComponentOracle()
    missing = tmp_path / 'missing.png'
    with pytest.raises(ValueError, match='missing.png'):
        slice_inference(oracle, missing)
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not an image')
    with pytest.raises(ValueError, match='broken.png'):
        slice_inference(oracle, broken)
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    with pytest.raises(ValueError, match='empty.png'):
        slice_inference(oracle, empty)
    with pytest.raises(ValueError, match='empty'):
        slice_inference(oracle, np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r'\(H, W, 3\) uint8'):
        slice_inference(oracle, np.zeros((10, 10), np.uint8))
    for model in (tmp_path / 'model.pth', tmp_path / 'missing.onnx', 42):
        with pytest.raises(ValueError, match='model_or_onnx'):
            slice_inference(model, np.zeros((10, 10, 3), np.uint8))


def test_progress_bar_only_when_asked_or_many_tiles(scene, capfd):
    image = scene[0]
    slice_inference(ComponentOracle(), image, tile=TILE)  # 20 tiles: no bar by default
    assert capfd.readouterr().out == ''
    slice_inference(ComponentOracle(), image, tile=TILE, batch_size=8, progress=True)
    assert '20/20' in capfd.readouterr().out
    slice_inference(ComponentOracle(), image, tile=64, overlap=0.0)  # 15 x 19 = 285 tiles
    assert '285/285' in capfd.readouterr().out
