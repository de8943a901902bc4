"""The test pipeline of a detector as plain data, and its numpy replay for ONNX Runtime.

An exported graph takes images after mmdet's test-time ``Resize`` and the data preprocessor's
padding. :func:`pipeline_meta` reads those steps (and the class names, mean, std and channel
order the graph applies) from a config into a JSON-able dict that the exporter stores in the ONNX
file; :func:`preprocess` replays them on numpy images with mmcv's own ``imrescale`` /
``imresize``, so the graph sees the pixels mmdet's pipeline would give it.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Test-pipeline transforms that do not change the pixels the network sees.
_PASSIVE_TRANSFORMS = frozenset({'LoadImageFromFile', 'LoadImageFromNDArray',
                                 'LoadAnnotations', 'PackDetInputs'})


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
        ValueError: a transform that changes pixels other than ``Resize``, a ``Resize`` with
            options the replay does not implement, or a preprocessor with batch augments.
    """
    pipeline = cfg.get('test_pipeline')
    test_loader = cfg.get('test_dataloader')
    if test_loader is not None and 'pipeline' in test_loader.get('dataset', {}):
        pipeline = test_loader['dataset']['pipeline']
    if not pipeline:
        raise ValueError('config has no test pipeline (test_dataloader.dataset.pipeline or '
                         'test_pipeline)')
    resize = None
    for transform in pipeline:
        name = _type_name(transform)
        if name in _PASSIVE_TRANSFORMS:
            continue
        if name != 'Resize' or resize is not None:
            raise ValueError(f'test pipeline transform {name} cannot be exported: only one '
                             f'Resize besides {sorted(_PASSIVE_TRANSFORMS)}')
        unsupported = set(transform) - {'type', 'scale', 'scale_factor', 'keep_ratio',
                                        'interpolation', 'backend', 'clip_object_border'}
        if unsupported:
            raise ValueError(f'test pipeline Resize options {sorted(unsupported)} cannot be '
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
            raise ValueError('test pipeline Resize needs scale or scale_factor')
    prep = cfg.model.get('data_preprocessor') or {}
    if _type_name(prep) not in ('DetDataPreprocessor', 'RetinaDataPreprocessor'):
        raise ValueError(f'model.data_preprocessor must be DetDataPreprocessor or '
                         f'RetinaDataPreprocessor, got {_type_name(prep)}')
    if prep.get('batch_augments'):
        raise ValueError('model.data_preprocessor.batch_augments cannot be exported')
    if prep.get('rgb_to_bgr'):
        raise ValueError('model.data_preprocessor.rgb_to_bgr cannot be exported (input images '
                         'are BGR; bgr_to_rgb is supported)')
    mean = [float(v) for v in (prep.get('mean') or (0.0, 0.0, 0.0))]
    std = [float(v) for v in (prep.get('std') or (1.0, 1.0, 1.0))]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f'data_preprocessor mean and std need 3 values, got {mean}, {std}')
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


def resize_image(image: np.ndarray, resize: Optional[Dict[str, Any]]
                 ) -> Tuple[np.ndarray, Tuple[float, float]]:
    """mmdet's test-time ``Resize`` of one image, with the same mmcv calls.

    Args:
        image (np.ndarray): ``(H, W, 3)`` uint8 BGR.
        resize (dict | None): ``pipeline_meta(...)['resize']``; None keeps the image.

    Returns:
        tuple: the resized image and its ``(w_scale, h_scale)`` (new size / old size).
    """
    import mmcv
    from mmcv.image.geometric import _scale_size

    if resize is None:
        return image, (1.0, 1.0)
    h, w = image.shape[:2]
    scale = tuple(resize['scale']) if resize['scale'] else \
        _scale_size((w, h), resize['scale_factor'])
    if resize['keep_ratio']:
        out = mmcv.imrescale(image, scale, interpolation=resize['interpolation'],
                             backend=resize['backend'])
    else:
        out = mmcv.imresize(image, scale, interpolation=resize['interpolation'],
                            backend=resize['backend'])
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
