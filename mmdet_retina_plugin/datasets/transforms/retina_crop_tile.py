"""Cuts a training window out of a loaded image (the load-time half of ``RetinaTiledDataset``)."""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from ...utils.errors import RetinaConfigError


@TRANSFORMS.register_module()
class RetinaCropTile(BaseTransform):
    """Crops ``results['img']`` to ``results['tile_window']``.

    Place it right after ``LoadImageFromFile`` in a ``RetinaTiledDataset`` pipeline. The
    dataset has already moved the boxes into the window's pixels, so this transform touches
    only the image (and ``img_shape`` / ``ori_shape``, which become the window's): it may come
    before or after ``LoadAnnotations``.

    Required keys: ``img``, ``img_path``, ``tile_window`` (``(x1, y1, x2, y2)``, image pixels),
    ``tile_image_size`` (``(height, width)`` of the image's annotation).
    Modified keys: ``img`` (a contiguous copy of the window, ``(y2 - y1, x2 - x1, C)``),
    ``img_shape``, ``ori_shape``.

    Raises:
        RetinaConfigError: no ``tile_window`` (not a ``RetinaTiledDataset`` sample).
        ValueError: the decoded image's size differs from its annotation's (naming the file).
    """

    def transform(self, results: dict) -> dict:
        if 'tile_window' not in results:
            raise RetinaConfigError('RetinaCropTile needs samples of RetinaTiledDataset '
                                    f'(no tile_window in the info of {results.get("img_path")!r})')
        img = results['img']
        if tuple(img.shape[:2]) != tuple(results['tile_image_size']):
            raise ValueError(f'image {results["img_path"]!r} decodes to {img.shape[:2]} (H, W) '
                             f'but its annotation says {tuple(results["tile_image_size"])}')
        x1, y1, x2, y2 = results['tile_window']
        # A copy, so the whole decoded image is freed once the window is cut.
        results['img'] = np.ascontiguousarray(img[y1:y2, x1:x2])
        results['img_shape'] = results['ori_shape'] = (y2 - y1, x2 - x1)
        return results
