"""The sliced-inference loop shared by :func:`~.slice_inference.slice_inference` and
``RetinaSlicedDetector``: windows streamed in batches, detections mapped back and merged.

The loop knows neither the model nor the image type: ``crop(window)`` cuts one window out of
the image (a numpy view, a tensor slice), ``detect(crops)`` runs one batch of crops through
the detector and returns each crop's detections in the crop's pixels. Only ``batch_size`` crops
exist at a time, so a large image is never on the device whole.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from mmengine.structures import InstanceData

from ..utils.errors import RetinaConfigError
from ..utils.tiling import Window, check_overlap, check_tile, tile_windows
from .tile_merge import check_merge, merge_tile_detections

# With more windows than this, a progress bar is shown unless asked otherwise.
PROGRESS_MIN_TILES = 64


@dataclass
class SliceConfig:
    """How an image is sliced and its tiles' detections merged.

    Attributes:
        tile (int | Sequence[int]): window size, one int or ``(height, width)``; a side of the
            image shorter than it gets one window as long as that side.
        overlap (float): fraction of a window shared with its neighbour, in ``[0, 1)``.
        batch_size (int): windows per forward pass, >= 1.
        merge (str): ``'nms'`` (class-aware NMS over the whole image) or ``'greedy'`` (SAHI's
            greedy merge of matching boxes).
        merge_iou_thr (float | None): NMS IoU / greedy match threshold in [0, 1]; None: the
            model's NMS IoU threshold (0.5 when it has none).
        merge_metric (str): the greedy merge's match metric, ``'ios'`` or ``'iou'``.
        cut_ios_thr (float | None): a box touching an inner tile edge is dropped when a box of
            its class from another window covers this share of it (see :mod:`.tile_merge`);
            None keeps such boxes.
        edge_margin (float): pixels from an inner tile edge within which a box counts as cut.
        full_image (bool): also detect on the whole image, downscaled, and merge that in (for
            objects larger than a tile).
        full_image_scale (Sequence[int]): ``(long side, short side)`` limits the whole image is
            shrunk to fit, keeping its ratio, for that pass (never enlarged); mmdet's test
            scale ``(1333, 800)`` by default, so a huge image never reaches the device whole.
        max_per_img (int | None): detections kept per image after merging; None keeps all.
        progress (bool | None): a progress bar over the windows; None: with more than
            ``PROGRESS_MIN_TILES`` windows.
    """

    tile: Any = (800, 800)
    overlap: float = 0.2
    batch_size: int = 8
    merge: str = 'nms'
    merge_iou_thr: Optional[float] = None
    merge_metric: str = 'ios'
    cut_ios_thr: Optional[float] = 0.8
    edge_margin: float = 2.0
    full_image: bool = False
    full_image_scale: Any = (1333, 800)
    max_per_img: Optional[int] = None
    progress: Optional[bool] = None

    def __post_init__(self) -> None:
        self.tile = check_tile(self.tile)
        self.full_image_scale = check_tile(self.full_image_scale, 'full_image_scale')
        self.overlap = check_overlap(self.overlap)
        for name in ('batch_size', 'max_per_img'):
            value = getattr(self, name)
            if value is None and name == 'max_per_img':
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RetinaConfigError(f'{name} must be an int >= 1, got {value!r}')
        check_merge(self.merge, self.merge_metric, [('merge_iou_thr', self.merge_iou_thr),
                                                     ('cut_ios_thr', self.cut_ios_thr)])
        if isinstance(self.edge_margin, bool) or not isinstance(self.edge_margin, (int, float)) \
                or self.edge_margin < 0:
            raise RetinaConfigError(f'edge_margin must be a number >= 0, got {self.edge_margin!r}')


def fit_size(height: int, width: int, scale: Sequence[int]) -> Tuple[int, int]:
    """``(h, w)`` of a ``height`` x ``width`` image shrunk, keeping its ratio, to fit ``scale``
    (a long-side and a short-side limit, as mmcv's ``rescale_size``); never enlarged."""
    factor = min(1.0, max(scale) / max(height, width), min(scale) / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _progress_bar(num_windows: int, progress: Optional[bool]):
    show = num_windows > PROGRESS_MIN_TILES if progress is None else progress
    if not show:
        return None
    from mmengine.utils import ProgressBar

    # the current stdout: ProgressBar's default is the one at mmengine's import
    return ProgressBar(num_windows, file=sys.stdout)


def sliced_predict(height: int, width: int, crop: Callable[[Window], Any],
                   detect: Callable[[List[Any]], Sequence[InstanceData]], cfg: SliceConfig,
                   iou_thr: float, full_image: Optional[Callable[[], InstanceData]] = None
                   ) -> InstanceData:
    """Detects on every window of a ``height`` x ``width`` image and merges the results.

    Args:
        height (int): image height in pixels.
        width (int): image width in pixels.
        crop (Callable): ``crop((x1, y1, x2, y2))`` -> that window of the image.
        detect (Callable): ``detect(crops)`` -> per crop an InstanceData with ``bboxes``
            ``(Ni, 4)`` in the crop's pixels, ``scores`` ``(Ni,)`` and ``labels`` ``(Ni,)``; at
            most ``cfg.batch_size`` crops per call.
        cfg (SliceConfig): windows, batching and merging.
        iou_thr (float): the merge threshold when ``cfg.merge_iou_thr`` is None.
        full_image (Callable | None): ``full_image()`` -> detections on the whole image in its
            pixels, merged in when ``cfg.full_image``.

    Returns:
        InstanceData: ``bboxes`` ``(N, 4)`` x1, y1, x2, y2 in image pixels, ``scores`` ``(N,)``
        descending, ``labels`` ``(N,)`` class indices.

    Raises:
        ValueError: ``detect`` returned another number of results than it got crops.
    """
    windows: List[Tuple[int, int, int, int]] = tile_windows(height, width, cfg.tile, cfg.overlap)
    bar = _progress_bar(len(windows), cfg.progress)
    parts: List[InstanceData] = []
    for start in range(0, len(windows), cfg.batch_size):
        batch = windows[start:start + cfg.batch_size]
        results = detect([crop(w) for w in batch])
        if len(results) != len(batch):
            raise ValueError(f'the tile detector returned {len(results)} results for '
                             f'{len(batch)} tiles')
        for offset, (window, dets) in enumerate(zip(batch, results)):
            x1, y1 = window[:2]
            bboxes = dets.bboxes + dets.bboxes.new_tensor([x1, y1, x1, y1])
            parts.append(InstanceData(
                bboxes=bboxes, scores=dets.scores, labels=dets.labels,
                window_ids=torch.full_like(dets.labels, start + offset)))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        print()  # the bar leaves its line open
    if cfg.full_image and full_image is not None:
        dets = full_image()
        windows.append((0, 0, width, height))  # the whole image: no inner edges, never cut
        parts.append(InstanceData(bboxes=dets.bboxes, scores=dets.scores, labels=dets.labels,
                                  window_ids=torch.full_like(dets.labels, len(windows) - 1)))
    dets = InstanceData.cat(parts)
    window_tensor = torch.tensor(windows, dtype=torch.float32, device=dets.bboxes.device)
    return merge_tile_detections(
        dets, window_tensor, height, width, merge=cfg.merge,
        iou_thr=iou_thr if cfg.merge_iou_thr is None else cfg.merge_iou_thr,
        metric=cfg.merge_metric, cut_ios_thr=cfg.cut_ios_thr, edge_margin=cfg.edge_margin,
        max_per_img=cfg.max_per_img)


def forward_tiles(model: torch.nn.Module, inputs: torch.Tensor,
                  data_samples: Sequence[Any]) -> List[InstanceData]:
    """One forward pass of a single-stage detector over a batch of preprocessed tiles.

    The detector's public ``extract_feat`` and ``bbox_head.predict``: the plain detector's
    ``predict`` without attaching results to the samples (a sliced detector overrides that).

    Args:
        model (nn.Module): an mmdet single-stage detector.
        inputs (Tensor): ``(B, 3, H, W)`` tiles after the data preprocessor.
        data_samples (Sequence[DetDataSample]): per tile ``img_shape`` and ``scale_factor``
            (the tile's own test-time resize, undone here).

    Returns:
        List[InstanceData]: per tile ``bboxes`` ``(Ni, 4)`` in the tile's pixels before its
        resize, ``scores`` ``(Ni,)``, ``labels`` ``(Ni,)``.
    """
    return model.bbox_head.predict(model.extract_feat(inputs), data_samples, rescale=True)


def model_nms_iou(test_cfg: Any, default: float = 0.5) -> float:
    """The NMS IoU threshold of a head's ``test_cfg`` (``nms.iou_threshold``), else ``default``."""
    nms = (test_cfg or {}).get('nms') or {}
    return float(nms.get('iou_threshold', default))
