"""Deterministic synthetic detection data set: coloured shapes on textured backgrounds, COCO format.

Every image is drawn from its own ``numpy`` generator seeded with ``(seed, split, index)``, so an
image does not depend on how many others are made, and a rerun writes the same bytes (PNG through
OpenCV with a fixed compression level, JSON with sorted keys).

Images hold ``min_objects``..``max_objects`` filled shapes (circle, square, triangle, cross,
ring; none with probability ``empty_prob``) of random colour, rotation and size. Sizes are
log-uniform over ``object_size`` (pixels, longest side before rotation), so COCO's small
(< 32^2), medium and large ranges all occur. Shapes may occlude each other, but a placement is
rejected if it would hide more than ``1 - min_visible`` of an earlier shape. Boxes are tight
around the visible pixels; ``area`` is the box's area (the data set has no masks), which
COCOeval's small / medium / large ranges then split on.

Use from Python::

    from mmdet_retina_plugin.datasets.synthetic_shapes import make_dataset
    paths = make_dataset(root='data/shapes', num_train=600, num_val=100, image_size=(256, 256))

or from the shell::

    python -m mmdet_retina_plugin.datasets.synthetic_shapes --out data/shapes --num-train 600
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..utils.errors import RetinaConfigError

CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'cross', 'ring')
SPLITS: Tuple[str, ...] = ('train', 'val')
META_FILE = 'meta.json'
# Bumped whenever the drawing changes, so callers comparing meta.json regenerate stale copies.
GENERATOR_VERSION = 3

# Fixed encoder settings: the PNG bytes depend only on the pixels.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 6]
# Minimum RGB distance between a shape's colour and the mean background colour under it, so every
# shape is visible to a human; the texture still makes edges noisy.
_MIN_CONTRAST = 90.0
_MAX_PLACEMENT_TRIES = 30
# Sub-pixel vertex precision for OpenCV drawing, so small shapes keep their geometry.
_SHIFT = 4


def _check(name: str, ok: bool, allowed: str) -> None:
    if not ok:
        raise RetinaConfigError(f'{name} must be {allowed}')


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured background.

    Args:
        rng (np.random.Generator): the image's random generator.
        h (int): height in pixels.
        w (int): width in pixels.

    Returns:
        np.ndarray: float32 ``(H, W, 3)``, RGB in [0, 255].
    """
    c0, c1 = rng.uniform(30, 225, size=(2, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:  # linear gradient in a random direction
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    elif kind == 1:  # stripes of random period and direction
        a = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(8, 33))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    else:  # smooth blotches: upsampled low-resolution noise
        low = rng.uniform(0, 1, size=(max(h // 32, 2), max(w // 32, 2))).astype(np.float32)
        t = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    img = c0 + (c1 - c0) * t[..., None]
    # Fine-grained noise so edges are never perfectly clean.
    img += rng.normal(0, 8, size=(h, w, 3))
    return img.astype(np.float32)


def _polygon(center: Tuple[float, float], radius: float, angle: float, n: int) -> np.ndarray:
    k = np.arange(n)
    theta = angle + 2 * math.pi * k / n
    return np.stack([center[0] + radius * np.cos(theta), center[1] + radius * np.sin(theta)], 1)


def _rotate(points: np.ndarray, center: Tuple[float, float], angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rel = points - np.asarray(center)
    return np.stack([rel[:, 0] * c - rel[:, 1] * s, rel[:, 0] * s + rel[:, 1] * c], 1) + center


def _shape_mask(rng: np.random.Generator, label: int, h: int, w: int,
                size: float) -> np.ndarray:
    """Mask of one shape of class ``CLASSES[label]`` with longest side about ``size`` pixels.

    Args:
        rng (np.random.Generator): the image's random generator.
        label (int): index into ``CLASSES``.
        h (int): image height in pixels.
        w (int): image width in pixels.
        size (float): longest side of the shape in pixels.

    Returns:
        np.ndarray: bool ``(H, W)``; the shape lies fully inside the image.
    """
    r = size / 2
    cx = rng.uniform(r, w - r)
    cy = rng.uniform(r, h - r)
    angle = rng.uniform(0, 2 * math.pi)
    canvas = np.zeros((h, w), np.uint8)

    def fixed(v: float) -> int:  # OpenCV's fixed-point coordinates
        return int(round(v * (1 << _SHIFT)))

    def fill(points: np.ndarray) -> None:
        pts = np.round(points * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)

    name = CLASSES[label]
    if name in ('circle', 'ring'):
        cv2.circle(canvas, (fixed(cx), fixed(cy)), fixed(r), 1, -1, cv2.LINE_8, _SHIFT)
        if name == 'ring':
            inner = r * rng.uniform(0.45, 0.7)
            cv2.circle(canvas, (fixed(cx), fixed(cy)), fixed(inner), 0, -1, cv2.LINE_8, _SHIFT)
    elif name == 'square':
        fill(_polygon((cx, cy), r, angle, 4))
    elif name == 'triangle':
        fill(_polygon((cx, cy), r, angle, 3))
    else:  # cross: two bars of half-width ``arm`` through the centre
        arm = r * rng.uniform(0.3, 0.45)
        # Bar corners on the circle of radius r, so every rotation fits the placement.
        half = math.sqrt(r * r - arm * arm)
        for bar in (np.array([[-half, -arm], [half, -arm], [half, arm], [-half, arm]]),
                    np.array([[-arm, -half], [arm, -half], [arm, half], [-arm, half]])):
            fill(_rotate(bar + (cx, cy), (cx, cy), angle))
    return canvas.astype(bool)


def _shape_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """Random saturated colour at least ``_MIN_CONTRAST`` away from ``under`` (RGB ``(3,)``)."""
    for _ in range(50):
        hsv = np.array([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 256)]]],
                       np.uint8)
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            return colour
    return 255.0 - under  # the complement is always far enough


def _make_image(rng: np.random.Generator, h: int, w: int, max_objects: int,
                object_size: Tuple[float, float], empty_prob: float,
                min_visible: float, min_objects: int = 1) -> Tuple[np.ndarray, List[Dict]]:
    """Draws one image.

    Args:
        rng (np.random.Generator): the image's random generator.
        h (int): height in pixels.
        w (int): width in pixels.
        max_objects (int): most shapes drawn.
        object_size (Tuple[float, float]): ``(min, max)`` longest side of a shape in pixels.
        empty_prob (float): probability that the image has no shapes.
        min_visible (float): fraction of each shape's pixels that must stay unoccluded.
        min_objects (int): fewest shapes tried on an image that is not empty.

    Returns:
        Tuple[np.ndarray, List[Dict]]: the uint8 ``(H, W, 3)`` RGB image, and one dict per
        visible shape with ``label`` (index into ``CLASSES``), ``bbox`` (``[x, y, w, h]`` in
        pixels, COCO convention, tight around the visible pixels) and ``area`` (``w * h``).
    """
    img = _background(rng, h, w)
    n = 0 if rng.uniform() < empty_prob else int(rng.integers(min_objects, max_objects + 1))
    owner = np.full((h, w), -1, np.int32)  # index of the shape that is on top of each pixel
    labels: List[int] = []
    full_area: List[int] = []
    log_lo, log_hi = math.log(object_size[0]), math.log(object_size[1])
    for _ in range(n):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(_MAX_PLACEMENT_TRIES):
            size = math.exp(rng.uniform(log_lo, log_hi))
            mask = _shape_mask(rng, label, h, w, size)
            if not mask.any():
                continue
            hidden = np.bincount(owner[mask & (owner >= 0)], minlength=len(labels))
            visible = [1 - hidden[i] / full_area[i] for i in range(len(labels))]
            if all(v >= min_visible for v in visible):
                break
        else:
            continue  # no placement keeps the others visible: skip this shape
        colour = _shape_colour(rng, img[mask].mean(0))
        # A gentle linear shading across the shape, so it is not a flat colour.
        yy, xx = np.nonzero(mask)
        a = rng.uniform(0, 2 * math.pi)
        t = ((xx - xx.mean()) * math.cos(a) + (yy - yy.mean()) * math.sin(a)) / max(size, 1.0)
        img[yy, xx] = colour + 50.0 * t[:, None]
        owner[mask] = len(labels)
        labels.append(label)
        full_area.append(int(mask.sum()))
    img += rng.normal(0, 4, size=img.shape)  # sensor noise over shapes and background alike
    objects = []
    for i, label in enumerate(labels):
        yy, xx = np.nonzero(owner == i)
        x0, y0 = int(xx.min()), int(yy.min())
        w, h = int(xx.max()) + 1 - x0, int(yy.max()) + 1 - y0
        objects.append(dict(label=label, bbox=[x0, y0, w, h], area=w * h))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _write_split(root: str, split: str, split_id: int, num_images: int, seed: int,
                 image_size: Tuple[int, int], **image_kwargs) -> str:
    h, w = image_size
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    for idx in range(num_images):
        rng = np.random.default_rng([seed, split_id, idx])
        img, objects = _make_image(rng, h, w, **image_kwargs)
        file_name = f'{idx:06d}.png'
        if not cv2.imwrite(os.path.join(img_dir, file_name), img[..., ::-1], _PNG_PARAMS):
            raise OSError(f'could not write {os.path.join(img_dir, file_name)}')
        images.append(dict(id=idx + 1, file_name=file_name, height=h, width=w))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=idx + 1,
                                    category_id=obj['label'] + 1, bbox=obj['bbox'],
                                    area=obj['area'], iscrowd=0))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)])
    ann_file = os.path.join(root, 'annotations', f'{split}.json')
    os.makedirs(os.path.dirname(ann_file), exist_ok=True)
    with open(ann_file, 'w') as f:
        json.dump(coco, f, sort_keys=True)
    return ann_file


def make_dataset(root: str = 'data/shapes', num_train: int = 600, num_val: int = 100,
                 image_size: Sequence[int] = (256, 256), seed: int = 0, max_objects: int = 6,
                 object_size: Optional[Sequence[float]] = None, empty_prob: float = 0.1,
                 min_visible: float = 0.6, min_objects: int = 1) -> Dict[str, object]:
    """Writes the data set under ``root`` (overwriting files of the same name).

    Layout: ``root/{train,val}/NNNNNN.png``, ``root/annotations/{train,val}.json`` (COCO, category
    ids ``1..K`` in the order of ``CLASSES``, image ids from 1) and ``root/meta.json`` (the
    arguments, so callers can tell whether an existing copy matches what they want).

    Args:
        root (str): output directory.
        num_train (int): number of training images, >= 0.
        num_val (int): number of validation images, >= 0.
        image_size (Sequence[int]): ``(H, W)`` in pixels, each >= 32.
        seed (int): base seed; image ``i`` of a split uses ``default_rng([seed, split, i])``.
        max_objects (int): most shapes per image, >= 1 (fewer may fit).
            A non-empty image tries a uniform number in ``[min_objects, max_objects]``.
        object_size (Optional[Sequence[float]]): ``(min, max)`` longest side of a shape in
            pixels, ``4 <= min <= max <= min(H, W)``; default ``(10, 0.55 * min(H, W))``.
        empty_prob (float): probability in [0, 1] that an image has no shapes at all.
        min_visible (float): fraction in (0, 1] of each shape's pixels that must stay
            unoccluded.
        min_objects (int): fewest shapes tried on a non-empty image, in ``[1, max_objects]``
            (large images of many small shapes, for tiled training).

    Returns:
        Dict[str, object]: ``train_ann``, ``val_ann`` (JSON paths), ``train_img``, ``val_img``
        (image directories) and ``classes`` (tuple of names; label ``k`` has category id ``k + 1``).
    """
    _check('num_train', isinstance(num_train, int) and num_train >= 0, 'an int >= 0')
    _check('num_val', isinstance(num_val, int) and num_val >= 0, 'an int >= 0')
    _check('image_size', len(image_size) == 2 and all(int(s) >= 32 for s in image_size),
           'a pair (H, W) with H, W >= 32')
    h, w = int(image_size[0]), int(image_size[1])
    if object_size is None:
        object_size = (10.0, 0.55 * min(h, w))
    _check('object_size', len(object_size) == 2 and 4 <= object_size[0] <= object_size[1]
           <= min(h, w), f'a pair (min, max) with 4 <= min <= max <= {min(h, w)}')
    _check('max_objects', isinstance(max_objects, int) and max_objects >= 1, 'an int >= 1')
    _check('min_objects', isinstance(min_objects, int) and 1 <= min_objects <= max_objects,
           f'an int in [1, max_objects={max_objects}]')
    _check('empty_prob', 0.0 <= empty_prob <= 1.0, 'in [0, 1]')
    _check('min_visible', 0.0 < min_visible <= 1.0, 'in (0, 1]')
    image_kwargs = dict(max_objects=max_objects, min_objects=min_objects,
                        object_size=(float(object_size[0]), float(object_size[1])),
                        empty_prob=float(empty_prob), min_visible=float(min_visible))
    os.makedirs(root, exist_ok=True)
    paths: Dict[str, object] = {}
    for split_id, (split, num) in enumerate(zip(SPLITS, (num_train, num_val))):
        paths[f'{split}_ann'] = _write_split(root, split, split_id, num, seed, (h, w),
                                             **image_kwargs)
        paths[f'{split}_img'] = os.path.join(root, split)
    paths['classes'] = CLASSES
    with open(os.path.join(root, META_FILE), 'w') as f:
        json.dump(dataset_meta(num_train, num_val, (h, w), seed, **image_kwargs), f,
                  sort_keys=True, indent=1)
    return paths


def dataset_meta(num_train: int, num_val: int, image_size: Sequence[int], seed: int,
                 **image_kwargs) -> Dict[str, object]:
    """The record ``make_dataset`` stores in ``root/meta.json`` for these arguments."""
    return dict(generator_version=GENERATOR_VERSION, num_train=num_train, num_val=num_val,
                image_size=[int(s) for s in image_size], seed=seed, classes=list(CLASSES),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in image_kwargs.items()})


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/shapes', help='output root directory')
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--image-size', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-objects', type=int, default=6)
    parser.add_argument('--min-objects', type=int, default=1)
    parser.add_argument('--object-size', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'))
    parser.add_argument('--empty-prob', type=float, default=0.1)
    parser.add_argument('--min-visible', type=float, default=0.6)
    args = parser.parse_args(argv)
    paths = make_dataset(args.out, args.num_train, args.num_val, args.image_size, args.seed,
                         args.max_objects, args.object_size, args.empty_prob, args.min_visible,
                         args.min_objects)
    print(json.dumps(paths, indent=1))
    return paths


if __name__ == '__main__':
    main()
