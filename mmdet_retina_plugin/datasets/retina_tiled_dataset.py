"""Training on windows ("tiles") of large images: a dataset wrapper that indexes (image, window)
pairs once and crops each window only when it is loaded.

The windows are those of sliced inference (``mmdet_retina_plugin.utils.tiling.tile_windows``),
so a detector trains on the tiles it will later see. Boxes are moved into each window's pixels
at index time (no image is decoded then); the ``RetinaCropTile`` transform cuts the window out
of the decoded image in the pipeline.
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from mmdet.registry import DATASETS
from mmengine.dataset import BaseDataset

from ..utils.errors import RetinaConfigError
from ..utils.tiling import TileSize, Window, check_overlap, check_tile, tile_windows

PARTIAL_MODES = ('drop', 'ignore')
CROP_TRANSFORM = 'RetinaCropTile'


def window_instances(instances: Sequence[dict], window: Window, min_visible: float,
                     partial: str) -> Tuple[List[dict], np.ndarray]:
    """The instances of one window, their boxes shifted to the window's pixels and clipped to it.

    A box is kept when at least ``min_visible`` of its area lies inside the window. Partly
    visible boxes (some area inside, less than ``min_visible``) are dropped
    (``partial='drop'``) or kept clipped with ``ignore_flag=1`` (``'ignore'``). Instances the
    wrapped dataset already ignores (``ignore_flag=1``) stay ignored wherever they overlap the
    window.

    Args:
        instances (Sequence[dict]): mmdet instances: ``bbox`` ``[x1, y1, x2, y2]`` in image
            pixels, ``bbox_label``, ``ignore_flag``.
        window (Tuple[int, int, int, int]): ``(x1, y1, x2, y2)`` in image pixels.
        min_visible (float): visible fraction that keeps a box, in ``(0, 1]``.
        partial (str): ``'drop'`` or ``'ignore'``.

    Returns:
        Tuple[List[dict], np.ndarray]: new instances (``bbox``, ``bbox_label``,
        ``ignore_flag``) in window pixels, and a bool ``(N,)`` mask over ``instances``: kept
        as a box to learn (not ignored) in this window.
    """
    if not instances:
        return [], np.zeros(0, bool)
    boxes = np.array([inst['bbox'] for inst in instances], np.float64).reshape(-1, 4)
    was_ignored = np.array([bool(inst.get('ignore_flag', 0)) for inst in instances])
    origin = np.array(window[:2] * 2, np.float64)
    clipped = np.concatenate([np.maximum(boxes[:, :2], window[:2]),
                              np.minimum(boxes[:, 2:], window[2:])], 1)
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), 1)
    overlaps = inside > 0
    area = np.prod(boxes[:, 2:] - boxes[:, :2], 1)
    # only where the box overlaps the window, so a box without area (mmdet's CocoDataset drops
    # those) is never divided by
    visible = np.divide(inside, area, out=np.zeros_like(inside), where=overlaps)
    kept = overlaps & ~was_ignored & (visible >= min_visible)
    listed = kept | (overlaps & (was_ignored | (partial == 'ignore')))
    out = [dict(bbox=(clipped[i] - origin).tolist(), bbox_label=instances[i]['bbox_label'],
                ignore_flag=int(not kept[i])) for i in np.flatnonzero(listed)]
    return out, kept


def _outside(bbox: Sequence[float], height: int, width: int) -> bool:
    """Whether the box ``[x1, y1, x2, y2]`` extends beyond a ``height`` x ``width`` image."""
    return bbox[0] < 0 or bbox[1] < 0 or bbox[2] > width or bbox[3] > height


@DATASETS.register_module()
class RetinaTiledDataset(BaseDataset):
    """Windows of the images of a detection dataset, each a training sample of its own.

    At build time every image of ``dataset`` is split into the windows of
    :func:`~mmdet_retina_plugin.utils.tiling.tile_windows` (from the ``width`` / ``height`` of
    its annotation, without decoding it), and each window gets the boxes of
    :func:`window_instances`. Windows without a kept box ("empty": none, or only ignored ones)
    are sampled down to ``round(empty_fraction * count)``, chosen once by ``seed``. The
    ``pipeline`` must hold ``RetinaCropTile`` after the image is loaded; each sample's info
    carries ``tile_window`` (``(x1, y1, x2, y2)`` in image pixels) for it, and ``width`` /
    ``height`` are the window's.

    Boxes reaching beyond their image are clipped by the same rule (the part outside is never
    inside a window) and counted; objects kept in no window (too large for ``min_visible`` of
    them to fit a tile, or mostly outside the image) are counted too: one warning at build time
    gives both counts. Set the wrapped dataset's ``filter_cfg=dict(filter_empty_gt=False)`` to
    keep images without boxes: their windows are empty windows. Masks are not cropped: the
    windows carry boxes only.

    Args:
        dataset (dict | BaseDataset): the wrapped dataset or its config (e.g.
            ``dict(type='CocoDataset', ...)`` without a pipeline); its ``metainfo`` is ours.
        tile (int | Sequence[int]): window size, one int or ``(height, width)``.
        overlap (float): fraction of a window shared with its neighbour, in ``[0, 1)``.
        min_visible (float): fraction of a box's area inside a window that keeps it, in
            ``(0, 1]``.
        partial (str): what happens to a box with less inside: ``'drop'`` it, or keep its
            clipped part as an ignored instance (``'ignore'``; mmdet's ``PackDetInputs`` puts
            it in ``ignored_instances``, and the assigner ignores anchors covering it when its
            ``ignore_iof_thr`` is > 0).
        empty_fraction (float): fraction of the empty windows kept, in ``[0, 1]``.
        seed (int): seed of the choice of empty windows.
        pipeline (Sequence[dict]): the data pipeline, with ``RetinaCropTile``.
        test_mode (bool): as mmengine's ``BaseDataset`` (a failed load raises instead of
            loading another sample).
        lazy_init (bool): index the windows on first use instead of at construction.

    Raises:
        RetinaConfigError: a bad ``tile`` / ``overlap`` / ``min_visible`` / ``partial`` /
            ``empty_fraction``, or a pipeline without ``RetinaCropTile``.
        ValueError: an image whose annotation has no positive ``width`` / ``height`` (naming
            the file).
    """

    def __init__(self, dataset: Union[dict, BaseDataset], tile: TileSize = 800,
                 overlap: float = 0.2, min_visible: float = 0.5, partial: str = 'drop',
                 empty_fraction: float = 0.1, seed: int = 0,
                 pipeline: Sequence[Union[dict, object]] = (), test_mode: bool = False,
                 lazy_init: bool = False) -> None:
        self.tile = check_tile(tile)
        self.overlap = check_overlap(overlap)
        if isinstance(min_visible, bool) or not isinstance(min_visible, (int, float)) \
                or not 0.0 < min_visible <= 1.0:
            raise RetinaConfigError(f'min_visible must be a number in (0, 1], got {min_visible!r}')
        if partial not in PARTIAL_MODES:
            raise RetinaConfigError(f'partial must be one of {PARTIAL_MODES}, got {partial!r}')
        if isinstance(empty_fraction, bool) or not isinstance(empty_fraction, (int, float)) \
                or not 0.0 <= empty_fraction <= 1.0:
            raise RetinaConfigError(
                f'empty_fraction must be a number in [0, 1], got {empty_fraction!r}')
        if not any((t.get('type') if isinstance(t, dict) else type(t).__name__) == CROP_TRANSFORM
                   for t in pipeline):
            raise RetinaConfigError(f'pipeline must contain {CROP_TRANSFORM} after the image is '
                                    'loaded, or the boxes (in window pixels) miss the whole image')
        self.min_visible = float(min_visible)
        self.partial = partial
        self.empty_fraction = float(empty_fraction)
        self.seed = int(seed)
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.tile_stats: Dict[str, int] = {}
        super().__init__(metainfo=copy.deepcopy(self.dataset.metainfo), pipeline=list(pipeline),
                         test_mode=test_mode, lazy_init=lazy_init)

    def load_data_list(self) -> List[dict]:
        """The kept windows' infos, image by image and row by row within an image."""
        self.dataset.full_init()
        tiles: List[dict] = []
        is_empty: List[bool] = []
        outside = never_kept = 0
        for idx in range(len(self.dataset)):
            info = self.dataset.get_data_info(idx)
            height, width = self._image_size(info)
            instances = info.get('instances', [])
            learnt = [not inst.get('ignore_flag', 0) for inst in instances]
            outside += sum(_outside(inst['bbox'], height, width)
                           for inst, use in zip(instances, learnt) if use)
            kept_anywhere = np.zeros(len(instances), bool)
            base = {k: v for k, v in info.items() if k not in ('instances', 'sample_idx')}
            for window in tile_windows(height, width, self.tile, self.overlap):
                boxes, kept = window_instances(instances, window, self.min_visible, self.partial)
                kept_anywhere |= kept
                tiles.append(dict(base, instances=boxes, tile_window=window,
                                  tile_image_size=(height, width),
                                  height=window[3] - window[1], width=window[2] - window[0]))
                is_empty.append(not kept.any())
            never_kept += int((np.asarray(learnt, bool) & ~kept_anywhere).sum())
        empty_ids = np.flatnonzero(is_empty)
        num_kept_empty = int(round(self.empty_fraction * len(empty_ids)))
        rng = np.random.default_rng(self.seed)
        keep = ~np.asarray(is_empty, bool)
        keep[rng.choice(empty_ids, num_kept_empty, replace=False)] = True
        self.tile_stats = dict(images=len(self.dataset), windows=len(tiles),
                               empty_windows=len(empty_ids), kept_empty_windows=num_kept_empty,
                               boxes_outside_image=outside, boxes_in_no_window=never_kept)
        if outside or never_kept:
            warnings.warn(
                f'RetinaTiledDataset: {outside} boxes reach beyond their image (clipped to it; '
                f'kept where at least min_visible={self.min_visible} of the box lies inside a '
                f'window) and {never_kept} boxes are kept in no window (no window of '
                f'{self.tile} px with overlap {self.overlap} holds min_visible of them: too '
                'large, across a border with too little overlap, or mostly outside the image)',
                stacklevel=2)
        return [tile for tile, k in zip(tiles, keep) if k]

    @staticmethod
    def _image_size(info: dict) -> Tuple[int, int]:
        """``(height, width)`` of an image's annotation; ValueError naming the file if not > 0."""
        height, width = info.get('height'), info.get('width')
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                   for s in (height, width)):
            raise ValueError(f'image {info.get("img_path")!r} has width={width!r}, '
                             f'height={height!r} in its annotation; both must be ints > 0')
        return int(height), int(width)
