"""The test pipeline of a detector as plain data, and its numpy replay for ONNX Runtime.

An exported graph takes images after mmdet's test-time ``Resize`` and the data preprocessor's
padding. :func:`pipeline_meta` reads those steps (and the class names, mean, std and channel
order the graph applies) from a config into a JSON-able dict that the exporter stores in the ONNX
file; :func:`preprocess` replays them on numpy images with the calls of mmcv's ``imrescale`` /
``imresize`` (OpenCV's ``cv2.resize``, or Pillow's ``Image.resize``, with mmcv's sizes and
rounding), so the graph sees the pixels mmdet's pipeline would give it. Imports neither torch nor
mmcv: the runtime side needs only numpy and OpenCV (Pillow for ``backend='pillow'``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.errors import RetinaConfigError

# Test-pipeline transforms that do not change the pixels the network sees.
_PASSIVE_TRANSFORMS = frozenset({'LoadImageFromFile', 'LoadImageFromNDArray',
                                 'LoadAnnotations', 'PackDetInputs'})
# mmcv's interpolation names of each resize backend (mmcv.image.geometric), as attribute names
_INTERPOLATIONS = {
    'cv2': dict(nearest='INTER_NEAREST', bilinear='INTER_LINEAR', bicubic='INTER_CUBIC',
                area='INTER_AREA', lanczos='INTER_LANCZOS4'),
    'pillow': dict(nearest='NEAREST', bilinear='BILINEAR', bicubic='BICUBIC', box='BOX',
                   lanczos='LANCZOS', hamming='HAMMING'),
}


def _type_name(transform: Dict[str, Any]) -> str:
    kind = transform.get('type')
    return kind if isinstance(kind, str) else getattr(kind, '__name__', str(kind))


def pipeline_meta(cfg: Any, classes: Sequence[str]) -> Dict[str, Any]:
    """The preprocessing an exported graph and its runtime must reproduce.

    Args:
        cfg (mmengine.Config): detector config with ``model.data_preprocessor`` (mmdet's
            ``DetDataPreprocessor`` or ours) and ``test_dataloader.dataset.pipeline`` or
            ``test_pipeline``.
        classes (Sequence[str]): class names, index = label.

    Returns:
        dict: ``resize`` (``scale`` ``[w, h]`` or None, ``scale_factor``, ``keep_ratio``,
        ``interpolation``, ``backend``; None without a ``Resize``), ``pad_size_divisor``,
        ``pad_pixel`` (the input pixel value, per BGR channel, that the preprocessor's
        ``pad_value`` corresponds to), ``mean``, ``std``, ``bgr_to_rgb`` and ``classes``.

    Raises:
        RetinaConfigError: a transform that changes pixels other than ``Resize``, a ``Resize``
            with options the replay does not implement, or a preprocessor with batch augments.
    """
    pipeline = cfg.get('test_pipeline')
    test_loader = cfg.get('test_dataloader')
    if test_loader is not None and 'pipeline' in test_loader.get('dataset', {}):
        pipeline = test_loader['dataset']['pipeline']
    if not pipeline:
        raise RetinaConfigError('config has no test pipeline (test_dataloader.dataset.pipeline or '
                                'test_pipeline)')
    resize = None
    for transform in pipeline:
        name = _type_name(transform)
        if name in _PASSIVE_TRANSFORMS:
            continue
        if name != 'Resize' or resize is not None:
            raise RetinaConfigError(f'test pipeline transform {name} cannot be exported: only one '
                                    f'Resize besides {sorted(_PASSIVE_TRANSFORMS)}')
        unsupported = set(transform) - {'type', 'scale', 'scale_factor', 'keep_ratio',
                                        'interpolation', 'backend', 'clip_object_border'}
        if unsupported:
            raise RetinaConfigError(f'test pipeline Resize options {sorted(unsupported)} cannot be '
                                    'exported')
        scale = transform.get('scale')
        if isinstance(scale, int):
            scale = (scale, scale)
        resize = dict(scale=list(scale) if scale else None,
                      scale_factor=transform.get('scale_factor'),
                      keep_ratio=bool(transform.get('keep_ratio', False)),
                      interpolation=transform.get('interpolation', 'bilinear'),
                      backend=transform.get('backend', 'cv2'))
        if resize['scale'] is None and resize['scale_factor'] is None:
            raise RetinaConfigError('test pipeline Resize needs scale or scale_factor')
        names = _INTERPOLATIONS.get(resize['backend'])
        if names is None or resize['interpolation'] not in names:
            raise RetinaConfigError(
                f"test pipeline Resize backend={resize['backend']!r} with interpolation="
                f"{resize['interpolation']!r} cannot be exported: backends and interpolations "
                f'are {({k: sorted(v) for k, v in _INTERPOLATIONS.items()})}')
    prep = cfg.model.get('data_preprocessor') or {}
    if _type_name(prep) not in ('DetDataPreprocessor', 'RetinaDataPreprocessor'):
        raise RetinaConfigError(f'model.data_preprocessor must be DetDataPreprocessor or '
                                f'RetinaDataPreprocessor, got {_type_name(prep)}')
    if prep.get('batch_augments'):
        raise RetinaConfigError('model.data_preprocessor.batch_augments cannot be exported')
    if prep.get('rgb_to_bgr'):
        raise RetinaConfigError('model.data_preprocessor.rgb_to_bgr cannot be exported (input '
                                'images are BGR; bgr_to_rgb is supported)')
    mean = [float(v) for v in (prep.get('mean') or (0.0, 0.0, 0.0))]
    std = [float(v) for v in (prep.get('std') or (1.0, 1.0, 1.0))]
    if len(mean) != 3 or len(std) != 3:
        raise RetinaConfigError(f'data_preprocessor mean and std need 3 values, got {mean}, {std}')
    bgr_to_rgb = bool(prep.get('bgr_to_rgb', False))
    pad_value = float(prep.get('pad_value', 0))
    # The preprocessor pads after normalising; a raw pixel of mean + pad_value * std normalises
    # to pad_value, so padding the raw image with it gives the same network input.
    pad_pixel = [m + pad_value * s for m, s in zip(mean, std)]
    if bgr_to_rgb:
        pad_pixel = pad_pixel[::-1]
    return dict(resize=resize, pad_size_divisor=int(prep.get('pad_size_divisor', 1)),
                pad_pixel=pad_pixel, mean=mean, std=std, bgr_to_rgb=bgr_to_rgb,
                classes=list(classes))


def _scale_size(size: Tuple[int, int], scale: Union[float, Sequence[float]]) -> Tuple[int, int]:
    """mmcv's ``_scale_size``: ``(w, h)`` times ``scale``, rounded half up."""
    if isinstance(scale, (float, int)):
        scale = (scale, scale)
    w, h = size
    return int(w * float(scale[0]) + 0.5), int(h * float(scale[1]) + 0.5)


def _resize(image: np.ndarray, size: Tuple[int, int], interpolation: str,
            backend: str) -> np.ndarray:
    """mmcv's ``imresize`` to ``size`` ``(w, h)``: the same library call."""
    if backend == 'pillow':
        from PIL import Image

        codes = getattr(Image, 'Resampling', Image)  # Pillow >= 9.1 names them Resampling.*
        method = getattr(codes, _INTERPOLATIONS['pillow'][interpolation])
        return np.array(Image.fromarray(image).resize(size, method))
    import cv2

    return cv2.resize(image, size,
                      interpolation=getattr(cv2, _INTERPOLATIONS['cv2'][interpolation]))


def resize_image(image: np.ndarray, resize: Optional[Dict[str, Any]]
                 ) -> Tuple[np.ndarray, Tuple[float, float]]:
    """mmdet's test-time ``Resize`` of one image, with the sizes and library calls of mmcv's
    ``imrescale`` / ``imresize``.

    Args:
        image (np.ndarray): ``(H, W, 3)`` uint8 BGR.
        resize (dict | None): ``pipeline_meta(...)['resize']``; None keeps the image.

    Returns:
        tuple: the resized image and its ``(w_scale, h_scale)`` (new size / old size).
    """
    if resize is None:
        return image, (1.0, 1.0)
    h, w = image.shape[:2]
    # mmcv's Resize: the fixed scale, or the image's size times scale_factor
    scale = tuple(resize['scale']) if resize['scale'] else \
        _scale_size((w, h), resize['scale_factor'])
    if resize['keep_ratio']:  # mmcv's rescale_size: as large as fits (long edge, short edge)
        factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
        scale = _scale_size((w, h), factor)
    out = _resize(image, scale, resize['interpolation'], resize['backend'])
    return out, (out.shape[1] / w, out.shape[0] / h)


def check_image(image: Any, index: int) -> np.ndarray:
    """Returns ``image`` if it is an ``(H, W, 3)`` uint8 array; raises ValueError otherwise.

    Args:
        image (Any): the candidate.
        index (int): its position in the caller's list, for the message.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f'images[{index}] must be a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise ValueError(f'images[{index}] must be uint8 BGR, got dtype {image.dtype}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'images[{index}] must have shape (H, W, 3) (BGR), got {image.shape}')
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f'images[{index}] is empty: shape {image.shape}')
    return image


def preprocess(images: Sequence[np.ndarray], meta: Dict[str, Any],
               input_hw: Optional[Tuple[int, int]] = None
               ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[float, float]]]:
    """Resizes and pads a batch as mmdet's test pipeline and data preprocessor do.

    Args:
        images (Sequence[np.ndarray]): ``(H, W, 3)`` uint8 BGR images of any sizes.
        meta (dict): :func:`pipeline_meta`'s dict.
        input_hw (tuple[int, int] | None): pad every image to this size (a graph with a fixed
            input size); None pads to the batch's largest size rounded up to the divisor, as
            the data preprocessor does.

    Returns:
        tuple: ``batch`` ``(B, 3, H, W)`` float32 BGR pixels (padded with ``pad_pixel``),
        ``img_shapes`` ``(B, 2)`` int64 ``(h, w)`` of each resized image, and each image's
        ``(w_scale, h_scale)``.

    Raises:
        ValueError: a non-image, or an image larger than ``input_hw`` after resizing.
    """
    if len(images) == 0:
        raise ValueError('images must hold at least one image')
    resized, scales = [], []
    for i, image in enumerate(images):
        out, scale = resize_image(check_image(image, i), meta['resize'])
        resized.append(out)
        scales.append(scale)
    shapes = np.array([r.shape[:2] for r in resized], dtype=np.int64)
    if input_hw is None:
        divisor = meta['pad_size_divisor']
        pad_h, pad_w = (int(math.ceil(v / divisor)) * divisor for v in shapes.max(0))
    else:
        pad_h, pad_w = input_hw
        too_big = np.nonzero((shapes[:, 0] > pad_h) | (shapes[:, 1] > pad_w))[0]
        if too_big.size:
            i = int(too_big[0])
            raise ValueError(f'images[{i}] is {tuple(shapes[i])} after resizing, larger than '
                             f'the graph\'s fixed input {(pad_h, pad_w)} (export with --dynamic)')
    batch = np.empty((len(resized), pad_h, pad_w, 3), dtype=np.float32)
    batch[...] = np.asarray(meta['pad_pixel'], dtype=np.float32)
    for i, r in enumerate(resized):
        batch[i, :r.shape[0], :r.shape[1]] = r
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), shapes, scales
