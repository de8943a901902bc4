"""Pipeline step that removes degenerate ground-truth boxes and rejects NaN/Inf inputs."""
import logging
from typing import Any, Dict, Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import BaseBoxes
from mmengine.logging import print_log

from ...utils.errors import RetinaConfigError

# Per-instance annotation keys that must stay aligned with ``gt_bboxes``.
_INSTANCE_KEYS = ('gt_bboxes_labels', 'gt_ignore_flags', 'gt_masks')


def image_name(results: Dict[str, Any]) -> str:
    """``img_id=.., img_path=..`` of a pipeline sample, for messages."""
    return f'img_id={results.get("img_id")}, img_path={results.get("img_path")}'


@TRANSFORMS.register_module()
class RetinaSanitizeGt(BaseTransform):
    """Drops unusable gt boxes (with a warning) and raises on non-finite boxes or pixels.

    Place it right after ``LoadAnnotations`` (before any geometric transform) so that the
    messages refer to the boxes as annotated. Images left without boxes stay in the data set and
    train as background-only samples.

    Checks, in order:

    1. image pixels (float images only; integer images cannot hold NaN/Inf) and gt box
       coordinates must be finite, else :class:`ValueError` naming the image;
    2. boxes are clipped to the image (``clip=True``) — a box partly outside keeps its visible
       part;
    3. boxes whose width or height is below ``min_size`` pixels (zero/negative size, or fully
       outside the image after clipping) are dropped together with their labels, ignore flags
       and masks; a warning names the image and the dropped boxes.

    Required keys: ``img``, ``img_shape``, ``gt_bboxes`` (:class:`BaseBoxes` ``(N, 4)`` or
    ndarray ``(N, 4)`` in ``x1, y1, x2, y2`` pixels). Optional: ``img_id``, ``img_path``,
    ``gt_bboxes_labels`` ``(N,)``, ``gt_ignore_flags`` ``(N,)``, ``gt_masks`` (N masks).
    Modified keys: ``gt_bboxes`` and the optional per-instance keys.

    Args:
        min_size (float): minimum box width and height in pixels after clipping, ``>= 0``;
            boxes with a side ``< min_size`` — or ``<= 0`` when ``min_size == 0`` — are dropped.
        clip (bool): clip boxes to the image before the size test.
        check_image (bool): check float images for NaN/Inf.
    """

    def __init__(self, min_size: float = 1.0, clip: bool = True, check_image: bool = True) -> None:
        if not isinstance(min_size, (int, float)) or isinstance(min_size, bool) or not (
                np.isfinite(min_size) and min_size >= 0):
            raise RetinaConfigError(f'min_size must be a finite number >= 0, got {min_size!r}')
        self.min_size = float(min_size)
        self.clip = clip
        self.check_image = check_image

    def transform(self, results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        img = results.get('img')
        if (self.check_image and isinstance(img, np.ndarray) and img.dtype.kind == 'f'
                and not np.isfinite(img).all()):
            raise ValueError(f'Image has NaN/Inf pixels: {image_name(results)}')
        boxes = results.get('gt_bboxes')
        if boxes is None or len(boxes) == 0:
            return results
        is_boxes = isinstance(boxes, BaseBoxes)
        coords = boxes.tensor.numpy() if is_boxes else np.asarray(boxes, dtype=np.float32)
        if not np.isfinite(coords).all():
            rows = np.flatnonzero(~np.isfinite(coords).all(axis=1)).tolist()
            raise ValueError(f'gt_bboxes rows {rows} have NaN/Inf coordinates: '
                             f'{image_name(results)}')
        h, w = results['img_shape'][:2]
        if self.clip:
            coords = coords.copy()
            coords[:, 0::2] = coords[:, 0::2].clip(0, w)
            coords[:, 1::2] = coords[:, 1::2].clip(0, h)
        size = np.minimum(coords[:, 2] - coords[:, 0], coords[:, 3] - coords[:, 1])
        keep = size >= self.min_size if self.min_size > 0 else size > 0
        if not keep.all():
            raw = boxes.tensor.numpy() if is_boxes else np.asarray(boxes)
            print_log(f'RetinaSanitizeGt: dropped {int((~keep).sum())} of {len(keep)} gt boxes '
                      f'(side < {self.min_size} px after clipping to {w}x{h}): '
                      f'{raw[~keep].round(2).tolist()} in {image_name(results)}',
                      logger='current', level=logging.WARNING)
        coords = coords[keep]
        if is_boxes:
            results['gt_bboxes'] = type(boxes)(coords, dtype=boxes.dtype, device=boxes.device)
        else:
            results['gt_bboxes'] = coords.astype(np.asarray(boxes).dtype, copy=False)
        for key in _INSTANCE_KEYS:
            if key in results:
                results[key] = results[key][keep]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(min_size={self.min_size}, clip={self.clip}, '
                f'check_image={self.check_image})')
