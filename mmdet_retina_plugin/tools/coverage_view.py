"""The gt boxes of a COCO annotation file as a config's model sees them: resized by its
``Resize``, padded to its data preprocessor's ``pad_size_divisor``, grouped by padded shape.

:mod:`.anchor_coverage` measures how well the config's anchors cover them.
"""
from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from mmengine.config import Config

from ..utils.errors import RetinaConfigError


@dataclass
class ModelView:
    """How the model sees an image: the resize, the padding, the anchors and the IoU threshold.

    Attributes:
        anchor_generator (dict): the head's ``anchor_generator`` config (mmdet
            ``AnchorGenerator``).
        pos_iou_thr (float): the assigner's positive IoU threshold, in (0, 1].
        scale (Optional[Tuple[int, int]]): ``Resize`` target ``(w, h)``; ``None``:
            ``scale_factor`` sets the size.
        scale_factor (float): ``Resize``'s ``scale_factor`` (> 0), used when ``scale`` is None.
        keep_ratio (bool): ``Resize``'s ``keep_ratio``.
        pad_size_divisor (int): the data preprocessor's ``pad_size_divisor`` (>= 1).
    """
    anchor_generator: dict
    pos_iou_thr: float = 0.5
    scale: Optional[Tuple[int, int]] = None
    scale_factor: float = 1.0
    keep_ratio: bool = True
    pad_size_divisor: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.pos_iou_thr <= 1.0:
            raise RetinaConfigError(f'pos_iou_thr must be in (0, 1], got {self.pos_iou_thr}')
        if self.pad_size_divisor < 1:
            raise RetinaConfigError(f'pad_size_divisor must be >= 1, got {self.pad_size_divisor}')
        if self.scale is not None and (len(self.scale) != 2 or min(self.scale) <= 0):
            raise RetinaConfigError(f'scale must be a positive (w, h) pair, got {self.scale}')
        if not self.scale_factor > 0:
            raise RetinaConfigError(f'scale_factor must be > 0, got {self.scale_factor}')

    def resized_shape(self, width: int, height: int) -> Tuple[int, int]:
        """Returns the image size ``(w, h)`` after the config's ``Resize``."""
        # mmcv's Resize turns scale_factor into a target size first, rounded half up
        target = self.scale or (int(width * self.scale_factor + 0.5),
                                int(height * self.scale_factor + 0.5))
        if not self.keep_ratio:
            return target
        # mmcv.rescale_size: largest factor fitting (long, short) edges, sizes rounded half up.
        factor = min(max(target) / max(width, height), min(target) / min(width, height))
        return int(width * factor + 0.5), int(height * factor + 0.5)

    def padded_shape(self, width: int, height: int) -> Tuple[int, int]:
        """Returns ``(h, w)`` of the resized image padded to ``pad_size_divisor``."""
        d = self.pad_size_divisor
        return math.ceil(height / d) * d, math.ceil(width / d) * d


@dataclass
class GtSet:
    """Gt boxes of an annotation file, grouped by the padded image shape the model sees.

    Attributes:
        boxes (Dict[Tuple[int, int], torch.Tensor]): ``{(pad_h, pad_w): (G_s, 4)}`` resized gt
            boxes ``(x1, y1, x2, y2)`` per shape.
        areas (Dict[Tuple[int, int], torch.Tensor]): ``{(pad_h, pad_w): (G_s,)}`` ORIGINAL
            annotation areas (COCO ``area``).
    """
    boxes: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict)
    areas: Dict[Tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def shapes(self) -> List[Tuple[int, int]]:
        return sorted(self.boxes)

    def all_boxes(self) -> torch.Tensor:
        """(G, 4) resized boxes, shapes in :meth:`shapes` order."""
        return torch.cat([self.boxes[s] for s in self.shapes()]) if self.boxes \
            else torch.zeros(0, 4)

    def all_areas(self) -> torch.Tensor:
        """(G,) original areas, same order as :meth:`all_boxes`."""
        return torch.cat([self.areas[s] for s in self.shapes()]) if self.areas \
            else torch.zeros(0)


def _find_resize(pipeline: Iterable[dict]) -> Optional[dict]:
    for transform in pipeline:
        if str(transform.get('type', '')).split('.')[-1] == 'Resize':
            return transform
    return None


def _dataset_pipeline(dataloader_cfg: Optional[dict]) -> Optional[list]:
    """The pipeline of a dataloader's dataset, descending through dataset wrappers."""
    dataset = dataloader_cfg.get('dataset') if dataloader_cfg else None
    while dataset is not None:
        if 'pipeline' in dataset:
            return dataset['pipeline']
        dataset = dataset.get('dataset')
    return None


def model_view_from_config(cfg: Config, pipeline: str = 'test',
                           pos_iou_thr: Optional[float] = None) -> ModelView:
    """Reads the anchors, the resize, the padding and ``pos_iou_thr`` from an mmdet config.

    Args:
        cfg (Config): an mmdet RetinaNet-style config (``model.bbox_head.anchor_generator``).
        pipeline (str): ``'test'`` or ``'train'``: whose ``Resize`` sets the image size.
        pos_iou_thr (Optional[float]): overrides ``model.train_cfg.assigner.pos_iou_thr`` when
            given.

    Returns:
        ModelView: what the coverage needs to know of the model.
    """
    if pipeline not in ('test', 'train'):
        raise RetinaConfigError(f"pipeline must be 'test' or 'train', got {pipeline!r}")
    model = cfg['model']
    head = model.get('bbox_head') or {}
    if 'anchor_generator' not in head:
        raise RetinaConfigError('config has no model.bbox_head.anchor_generator')
    if pos_iou_thr is None:
        train_cfg = model.get('train_cfg') or head.get('train_cfg') or {}
        pos_iou_thr = (train_cfg.get('assigner') or {}).get('pos_iou_thr', 0.5)
    stages = cfg.get(f'{pipeline}_pipeline') or _dataset_pipeline(
        cfg.get(f'{pipeline}_dataloader')) or []
    resize = _find_resize(stages)
    preprocessor = model.get('data_preprocessor') or {}
    return ModelView(
        anchor_generator=dict(head['anchor_generator']),
        pos_iou_thr=float(pos_iou_thr),
        scale=tuple(resize['scale']) if resize is not None and resize.get('scale') else None,
        scale_factor=float(resize.get('scale_factor') or 1.0) if resize is not None else 1.0,
        keep_ratio=bool(resize.get('keep_ratio', False)) if resize is not None else True,
        pad_size_divisor=int(preprocessor.get('pad_size_divisor', 1)))


def load_gts(ann_file: str | Path, view: ModelView, max_images: Optional[int] = None) -> GtSet:
    """Loads COCO gt boxes, resized as the model sees them.

    Follows mmdet's ``CocoDataset``: crowd boxes and boxes thinner than 1 px are not trained on,
    so they are skipped. Resized boxes are clipped to the resized image (``Resize`` clips).

    Args:
        ann_file (str | Path): COCO annotation file.
        view (ModelView): how the model resizes and pads the images.
        max_images (Optional[int]): read only the first this many images (>= 1); all if None.

    Returns:
        GtSet: the resized gt boxes and their original areas, grouped by padded image shape.
    """
    if max_images is not None and max_images < 1:
        raise RetinaConfigError(f'max_images must be >= 1, got {max_images}')
    with open(ann_file) as f:
        coco = json.load(f)
    images = {img['id']: img for img in coco['images']}
    if max_images is not None:
        images = dict(itertools.islice(images.items(), max_images))
    boxes: Dict[Tuple[int, int], List[List[float]]] = defaultdict(list)
    areas: Dict[Tuple[int, int], List[float]] = defaultdict(list)
    for ann in coco['annotations']:
        img = images.get(ann['image_id'])
        if img is None or ann.get('iscrowd', 0):
            continue
        x, y, w, h = ann['bbox']
        if w < 1 or h < 1:
            continue
        new_w, new_h = view.resized_shape(img['width'], img['height'])
        sx, sy = new_w / img['width'], new_h / img['height']
        shape = view.padded_shape(new_w, new_h)
        boxes[shape].append([max(0.0, x * sx), max(0.0, y * sy),
                             min(new_w, (x + w) * sx), min(new_h, (y + h) * sy)])
        areas[shape].append(float(ann.get('area', w * h)))
    return GtSet(boxes={s: torch.tensor(b, dtype=torch.float32) for s, b in boxes.items()},
                 areas={s: torch.tensor(a, dtype=torch.float64) for s, a in areas.items()})
