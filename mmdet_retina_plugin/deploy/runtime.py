"""ONNX Runtime inference of a graph written by :func:`~.export.export_onnx`.

Needs numpy, onnxruntime and OpenCV only (``pip install numpy onnxruntime
opencv-python-headless``; Pillow too for a ``Resize`` with ``backend='pillow'``): neither this
module nor what it imports loads torch, mmcv, mmdet or mmengine, and where torch is not
installed ``import mmdet_retina_plugin`` registers nothing and loads none of them either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..utils.errors import RetinaConfigError
from .metadata import metadata_from_props
from .pipeline import preprocess


class OnnxRetinaNet:
    """Runs an exported detector on BGR images of any size, with the file's own pipeline.

    Each image is resized as the config's test pipeline does (mmcv's ``imrescale`` /
    ``imresize``, same scale, interpolation and rounding), the batch is padded as the data
    preprocessor pads it, and the boxes are mapped back to each original image.

    Args:
        path (str | Path): ``.onnx`` file from :func:`~.export.export_onnx` (with its
            metadata).
        providers (Sequence[str] | None): ONNX Runtime execution providers; None: CPU.
        threads (int | None): ONNX Runtime intra-op threads; None: its default (all cores).

    Attributes:
        meta (dict): the embedded metadata: ``classes``, ``resize``, ``pad_size_divisor``,
            ``mean``, ``std``, ``bgr_to_rgb``, ``test_cfg``, ``dynamic``, ``input_size``,
            ``batch_size``, ``outputs``, ``padding``.
    """

    def __init__(self, path: Union[str, Path], providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise RetinaConfigError(f'threads must be >= 1, got {threads}')
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options,
                                            providers=list(providers or ['CPUExecutionProvider']))
        self.meta: Dict[str, Any] = metadata_from_props(
            self.session.get_modelmeta().custom_metadata_map, path)
        self._inputs = {i.name for i in self.session.get_inputs()}

    @property
    def classes(self) -> List[str]:
        """Class names, index = label."""
        return list(self.meta['classes'])

    def _run(self, images: Sequence[np.ndarray]) -> tuple:
        input_hw = None if self.meta['dynamic'] else tuple(self.meta['input_size'])
        batch, img_shapes, scales = preprocess(images, self.meta, input_hw)
        feeds = {'images': batch, 'img_shapes': img_shapes}
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs}), \
            scales

    def raw(self, images: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """The outputs of a graph exported without post-processing, by name.

        Args:
            images (Sequence[np.ndarray]): ``(H, W, 3)`` uint8 BGR images, one batch.

        Returns:
            dict: ``cls_score_i`` ``(B, A*K, Hi, Wi)``, ``bbox_pred_i`` ``(B, A*4, Hi, Wi)``
            and ``anchors`` ``(sum(Hi*Wi*A), 4)`` (x1, y1, x2, y2 in input pixels).
        """
        if self.meta['postprocess']:
            raise RetinaConfigError('raw() needs a graph exported with postprocess=False '
                                    '(--no-postprocess); use det()')
        outputs, _ = self._run(list(images))
        return dict(zip(self.meta['outputs'], outputs))

    def det(self, images: Sequence[np.ndarray]) -> List[Dict[str, np.ndarray]]:
        """Detections of each image.

        Args:
            images (Sequence[np.ndarray]): ``(H, W, 3)`` uint8 BGR images of any sizes. A
                graph with a dynamic batch runs them as one batch (padded to the largest,
                as mmdet pads a batch); a fixed-size graph runs them ``batch_size`` at a time.

        Returns:
            list[dict]: per image ``bboxes`` ``(N, 4)`` float32 x1, y1, x2, y2 in the original
            image's pixels, ``scores`` ``(N,)`` float32 descending and ``labels`` ``(N,)``
            int64 class indices into :attr:`classes`; ``N <= max_per_img``.

        Raises:
            ValueError: a non-image (not a uint8 ``(H, W, 3)`` array) or an empty list.
            RetinaConfigError: a graph exported without post-processing.
        """
        if not self.meta['postprocess']:
            raise RetinaConfigError('det() needs a graph exported with post-processing; this one '
                                    'was exported with postprocess=False (--no-postprocess): use '
                                    'raw()')
        images = list(images)
        if not images:
            raise ValueError('images must hold at least one image')
        step = len(images) if self.meta['dynamic'] else self.meta['batch_size']
        results = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            # a fixed batch is filled up with copies of the last image, whose results are dropped
            filled = chunk + [chunk[-1]] * (step - len(chunk))
            (dets, labels), scales = self._run(filled)
            for i in range(len(chunk)):
                keep = labels[i] >= 0
                w_scale, h_scale = scales[i]
                # as mmdet's rescale: multiply by the inverse scale
                inv = np.array([1 / w_scale, 1 / h_scale] * 2, dtype=np.float32)
                results.append(dict(bboxes=(dets[i, keep, :4] * inv).astype(np.float32),
                                    scores=dets[i, keep, 4].astype(np.float32),
                                    labels=labels[i, keep].astype(np.int64)))
        return results
