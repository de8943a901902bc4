"""Sliced inference of large images with a PyTorch detector or an exported ONNX graph.

``slice_inference(model_or_onnx, image, tile=(800, 800), overlap=0.2, batch_size=8)`` cuts the
image into overlapping windows (:func:`~mmdet_retina_plugin.utils.tiling.tile_windows`), runs
them through the detector ``batch_size`` at a time, maps each tile's boxes back to the image
and merges them (:mod:`.tile_merge`). The loop is :func:`.sliced_core.sliced_predict`, the one
``RetinaSlicedDetector`` runs too.

Each tile goes through the model's own test pipeline minus loading, as an image of the tile's
size would: a config whose test ``Resize`` fits images into 1333x800 leaves an 800x800 tile at
scale 1, a config that resizes every image to a fixed size resizes each tile to it. Boxes come
back in full-image pixels either way (each tile's resize is undone before its offset is added).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ..utils.errors import RetinaConfigError
from .sliced_core import SliceConfig, fit_size, forward_tiles, model_nms_iou, sliced_predict
from .tile_merge import check_merge

# Test-pipeline transforms that sliced inference skips: the tile is already an array, and
# tiles have no annotations.
_SKIPPED_TRANSFORMS = frozenset({'LoadImageFromFile', 'LoadImageFromNDArray', 'LoadAnnotations'})
# Merge threshold of a tile detector that does not state its own.
DEFAULT_IOU_THR = 0.5


def load_image(image: Union[str, Path, np.ndarray]) -> np.ndarray:
    """An image file (read as 3-channel BGR, as mmcv reads it) or an ``(H, W, 3)`` uint8 array.

    Args:
        image (str | Path | np.ndarray): the file, or a BGR array (returned as it is).

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8 BGR.

    Raises:
        ValueError: a missing or unreadable file (named).
        RetinaConfigError: an argument that is not a path or a non-empty ``(H, W, 3)`` uint8
            image.
    """
    if isinstance(image, (str, Path)):
        import mmcv
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ValueError(f'cannot read image file {path}: {error}') from error
        array = mmcv.imfrombytes(data, flag='color') if data else None
        if array is None:
            raise ValueError(f'image file {path} is empty or not a readable image')
        image = array
    if not isinstance(image, np.ndarray):
        raise RetinaConfigError(
            f'image must be a file path or a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RetinaConfigError(f'image must be an (H, W, 3) uint8 BGR array, got {image.dtype} '
                                f'{image.shape}')
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise RetinaConfigError(f'image is empty: shape {image.shape}')
    return image


class TorchTileDetector:
    """Runs batches of BGR tiles through a PyTorch detector: its config's test pipeline minus
    loading, its data preprocessor, ``extract_feat`` and ``bbox_head.predict``.

    Args:
        model (nn.Module): an mmdet single-stage detector with its config as ``model.cfg``
            (as ``mmdet.apis.init_detector`` builds it).

    Raises:
        RetinaConfigError: a model without ``cfg``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        from mmcv.transforms import Compose
        from mmdet.utils import get_test_pipeline_cfg

        cfg = getattr(model, 'cfg', None)
        if cfg is None:
            raise RetinaConfigError('model_or_onnx has no .cfg: build the detector with '
                                    'mmdet.apis.init_detector (or set model.cfg to its config)')
        pipeline = [t for t in get_test_pipeline_cfg(cfg)
                    if str(t['type']).split('.')[-1] not in _SKIPPED_TRANSFORMS]
        self.model = model
        self.pipeline = Compose(pipeline)
        self.iou_thr = model_nms_iou(model.bbox_head.test_cfg)

    def __call__(self, crops: Sequence[np.ndarray]) -> List[InstanceData]:
        """Per ``(h, w, 3)`` BGR crop: ``bboxes`` ``(Ni, 4)`` in its pixels, ``scores``,
        ``labels``."""
        from mmengine.dataset import pseudo_collate

        items = [self.pipeline(dict(img=c, img_shape=c.shape[:2], ori_shape=c.shape[:2],
                                    img_id=i, img_path=None)) for i, c in enumerate(crops)]
        with torch.no_grad():
            data = self.model.data_preprocessor(pseudo_collate(items), False)
            return forward_tiles(self.model, data['inputs'], data['data_samples'])


class OnnxTileDetector:
    """Runs batches of BGR tiles through an exported graph with ONNX Runtime
    (:meth:`~mmdet_retina_plugin.deploy.OnnxRetinaNet.det`: a dynamic graph takes a batch in one
    run, a fixed one ``batch_size`` tiles per run).

    Args:
        runner (str | Path | OnnxRetinaNet): the ``.onnx`` file or its runtime.
    """

    def __init__(self, runner: Any) -> None:
        from ..deploy import OnnxRetinaNet
        self.runner = runner if isinstance(runner, OnnxRetinaNet) else OnnxRetinaNet(runner)
        self.iou_thr = model_nms_iou(self.runner.meta.get('test_cfg'))

    def __call__(self, crops: Sequence[np.ndarray]) -> List[InstanceData]:
        """As :meth:`TorchTileDetector.__call__`."""
        return [InstanceData(**{k: torch.from_numpy(v) for k, v in det.items()})
                for det in self.runner.det([np.ascontiguousarray(c) for c in crops])]


def tile_detector(model_or_onnx: Any) -> Callable[[List[np.ndarray]], List[InstanceData]]:
    """The tile runner for a PyTorch detector, an ``.onnx`` path or an ``OnnxRetinaNet``; any
    other callable (``crops -> detections``, as :meth:`TorchTileDetector.__call__`) is one
    already."""
    if isinstance(model_or_onnx, torch.nn.Module):
        return TorchTileDetector(model_or_onnx)
    if callable(model_or_onnx):
        return model_or_onnx
    if isinstance(model_or_onnx, (str, Path)):
        path = Path(model_or_onnx)
        if path.suffix != '.onnx' or not path.is_file():
            raise RetinaConfigError(
                f'model_or_onnx must be a detector, an existing .onnx file or an '
                f'OnnxRetinaNet, got the path {path}')
    elif not hasattr(model_or_onnx, 'det'):
        raise RetinaConfigError(
            f'model_or_onnx must be a detector, an .onnx file or an OnnxRetinaNet, '
            f'got {type(model_or_onnx).__name__}')
    return OnnxTileDetector(model_or_onnx)


def slice_inference(model_or_onnx: Any, image: Union[str, Path, np.ndarray],
                    tile: Union[int, Sequence[int]] = (800, 800), overlap: float = 0.2,
                    batch_size: int = 8, merge: str = 'nms',
                    merge_iou_thr: Optional[float] = None, merge_metric: str = 'ios',
                    cut_ios_thr: Optional[float] = 0.8, full_image: bool = False,
                    full_image_scale: Sequence[int] = (1333, 800),
                    score_thr: Optional[float] = None, max_per_img: Optional[int] = None,
                    progress: Optional[bool] = None) -> DetDataSample:
    """Detections on a large image, tile by tile, in full-image pixels.

    Args:
        model_or_onnx: an mmdet detector with ``cfg`` (``mmdet.apis.init_detector``), an
            exported ``.onnx`` path, an ``OnnxRetinaNet``, or a tile detector: a callable
            ``crops -> detections`` (:func:`tile_detector`'s result, reusable across images; its
            ``iou_thr`` attribute, if any, is the default merge threshold).
        image (str | Path | np.ndarray): image file, or ``(H, W, 3)`` uint8 BGR array.
        tile (int | Sequence[int]): window ``(height, width)``; an image side shorter than the
            tile gets one window over that whole side.
        overlap (float): fraction of a window shared with its neighbour, in ``[0, 1)``.
        batch_size (int): tiles per forward pass.
        merge (str): ``'nms'`` (class-aware NMS over the image) or ``'greedy'`` (SAHI's merge:
            union box, best score).
        merge_iou_thr (float | None): NMS IoU / greedy match threshold; None: the model's NMS
            IoU threshold (0.5 if it has none).
        merge_metric (str): greedy match metric, ``'ios'`` or ``'iou'``.
        cut_ios_thr (float | None): IoS at which a box seen whole in one window removes the
            box cut by another window's inner edge; None keeps cut boxes.
        full_image (bool): also detect on the whole image and merge those detections in: it
            is shrunk (mmcv's ``imresize``, keeping its ratio) to fit ``full_image_scale``, then
            goes through the model's test pipeline like a tile.
        full_image_scale (Sequence[int]): ``(long, short)`` side limits of that pass.
        score_thr (float | None): keep merged detections scoring at least this, in [0, 1];
            None: all (the model's own ``score_thr`` applies per tile).
        max_per_img (int | None): at most this many detections; None: all.
        progress (bool | None): a progress bar; None: with more than 64 tiles.

    Returns:
        DetDataSample: ``pred_instances`` with ``bboxes`` ``(N, 4)`` x1, y1, x2, y2 in the
        image's pixels, ``scores`` ``(N,)`` descending, ``labels`` ``(N,)`` class indices;
        on the CPU. No detections: ``N = 0``.

    Raises:
        RetinaConfigError: a bad argument (named).
        ValueError: an unreadable image file (named).
    """
    cfg = SliceConfig(tile=tile, overlap=overlap, batch_size=batch_size, merge=merge,
                      merge_iou_thr=merge_iou_thr, merge_metric=merge_metric,
                      cut_ios_thr=cut_ios_thr, full_image=full_image,
                      full_image_scale=full_image_scale, max_per_img=max_per_img,
                      progress=progress)
    check_merge(merge, merge_metric, [('score_thr', score_thr)])
    path = image if isinstance(image, (str, Path)) else None
    array = load_image(image)
    detect = tile_detector(model_or_onnx)
    height, width = array.shape[:2]

    def full_image_pass() -> InstanceData:
        import mmcv
        small_h, small_w = fit_size(height, width, cfg.full_image_scale)
        small = array if (small_h, small_w) == (height, width) else \
            mmcv.imresize(array, (small_w, small_h))
        dets = detect([small])[0]
        dets.bboxes = dets.bboxes * dets.bboxes.new_tensor([width / small_w, height / small_h] * 2)
        return dets

    dets = sliced_predict(height, width, lambda w: array[w[1]:w[3], w[0]:w[2]], detect, cfg,
                          getattr(detect, 'iou_thr', DEFAULT_IOU_THR), full_image_pass).cpu()
    if score_thr is not None:
        dets = dets[dets.scores >= score_thr]
    sample = DetDataSample(metainfo=dict(img_path=None if path is None else str(path),
                                         ori_shape=(height, width), img_shape=(height, width)))
    sample.pred_instances = dets
    return sample
