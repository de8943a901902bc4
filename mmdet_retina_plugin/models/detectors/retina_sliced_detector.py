"""A single-stage detector that predicts on large images tile by tile (sliced inference).

``RetinaSlicedDetector`` is mmdet's ``SingleStageDetector`` (the class behind ``RetinaNet``)
with a sliced test step; its parameters are the plain detector's, so a checkpoint of a
``RetinaNet`` (trained on tiles or on whole images) loads into it with ``strict=True``. Swap
the type name and add ``slice_cfg``::

    model = dict(type='RetinaSlicedDetector',
                 slice_cfg=dict(tile=800, overlap=0.2, batch_size=8, merge='nms'), ...)

Its test pipeline should keep images at full resolution (no ``Resize``, or
``Resize(scale_factor=1.0, keep_ratio=True)``): tiles are cut from the image the pipeline
gives and are not resized again; boxes are mapped back to the original image through the
sample's ``scale_factor``, as mmdet's ``rescale`` does. Training (``loss``) is the plain
detector's.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.detectors.single_stage import SingleStageDetector
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample, SampleList
from mmengine.structures import InstanceData
from torch import Tensor

from ...apis.sliced_core import SliceConfig, fit_size, forward_tiles, model_nms_iou, sliced_predict
from ...utils.errors import RetinaConfigError


def _tile_samples(crops: Sequence[Tensor], scale_factor: Tuple[float, float] = (1.0, 1.0)
                  ) -> List[DetDataSample]:
    """Samples of crops ``(3, h, w)`` as the test pipeline would pack them."""
    return [DetDataSample(metainfo=dict(img_shape=tuple(c.shape[-2:]),
                                        ori_shape=tuple(c.shape[-2:]), scale_factor=scale_factor))
            for c in crops]


@MODELS.register_module()
class RetinaSlicedDetector(SingleStageDetector):
    """mmdet's single-stage detector predicting tile by tile on full-resolution images.

    Args:
        backbone, neck, bbox_head, train_cfg, test_cfg, data_preprocessor, init_cfg: as
            mmdet's ``SingleStageDetector`` (``RetinaNet``).
        slice_cfg (dict | None): :class:`~mmdet_retina_plugin.apis.sliced_core.SliceConfig`'s
            fields (``tile``, ``overlap``, ``batch_size``, ``merge``, ``merge_iou_thr``,
            ``merge_metric``, ``cut_ios_thr``, ``edge_margin``, ``full_image``,
            ``full_image_scale``, ``max_per_img``, ``progress``); None: the defaults.

    Raises:
        RetinaConfigError: an unknown ``slice_cfg`` key or a value out of range.
    """

    def __init__(self, backbone: Dict, neck: Optional[Dict] = None,
                 bbox_head: Optional[Dict] = None, train_cfg: Optional[Dict] = None,
                 test_cfg: Optional[Dict] = None, data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None,
                 slice_cfg: Optional[Dict] = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head,
                         train_cfg=train_cfg, test_cfg=test_cfg,
                         data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        options = dict(slice_cfg or {})
        unknown = set(options) - set(SliceConfig.__dataclass_fields__)
        if unknown:
            raise RetinaConfigError(f'slice_cfg has unknown keys {sorted(unknown)}; allowed: '
                                    f'{sorted(SliceConfig.__dataclass_fields__)}')
        self.slice_cfg = SliceConfig(**options)

    def _slice_one(self, image: Tensor, sample: DetDataSample, preprocessed: bool
                   ) -> InstanceData:
        """Sliced detections of one image ``(3, H, W)`` in its pixels (before ``rescale``).

        ``preprocessed``: the image went through the data preprocessor already (normalised,
        on the device), else it is the pipeline's raw CPU tensor, and each batch of tiles goes
        through the preprocessor on its own (the whole image never reaches the device).
        """
        height, width = sample.img_shape[:2]
        image = image[:, :height, :width]  # a batch is padded to its largest image

        def run(crops: List[Tensor], scale_factor=(1.0, 1.0)) -> List[InstanceData]:
            samples = _tile_samples(crops, scale_factor)
            if preprocessed:
                return forward_tiles(self, self._pad(torch.stack(crops)), samples)
            batch = self.data_preprocessor(dict(inputs=crops, data_samples=samples), False)
            return forward_tiles(self, batch['inputs'], batch['data_samples'])

        def full_image() -> InstanceData:
            small, scale_factor = self._downscale(image)
            return run([small], scale_factor)[0]

        return sliced_predict(
            height, width, lambda w: image[:, w[1]:w[3], w[0]:w[2]], run, self.slice_cfg,
            model_nms_iou(self.bbox_head.test_cfg), full_image)

    def _downscale(self, image: Tensor) -> Tuple[Tensor, Tuple[float, float]]:
        """The image ``(3, H, W)`` shrunk (bilinear, keeping its ratio) to fit
        ``slice_cfg.full_image_scale``, and its ``(w_scale, h_scale)``; never enlarged."""
        height, width = image.shape[-2:]
        size = fit_size(height, width, self.slice_cfg.full_image_scale)
        if size == (height, width):
            return image, (1.0, 1.0)
        # uint8 stays uint8: a float copy of a huge image would take 4 bytes per value
        small = F.interpolate(image[None], size=size, mode='bilinear', align_corners=False)[0]
        return small, (size[1] / width, size[0] / height)

    def _pad(self, batch: Tensor) -> Tensor:
        """Pads preprocessed tiles ``(B, 3, h, w)`` bottom/right to the preprocessor's divisor
        with its pad value, as the preprocessor pads a batch."""
        divisor = getattr(self.data_preprocessor, 'pad_size_divisor', 1)
        pad_value = getattr(self.data_preprocessor, 'pad_value', 0)
        h, w = batch.shape[-2:]
        pad_h, pad_w = math.ceil(h / divisor) * divisor - h, math.ceil(w / divisor) * divisor - w
        return F.pad(batch, (0, pad_w, 0, pad_h), value=pad_value) if pad_h or pad_w else batch

    def _attach(self, images: Union[Tensor, Sequence[Tensor]], samples: SampleList,
                preprocessed: bool, rescale: bool) -> SampleList:
        for image, sample in zip(images, samples):
            dets = self._slice_one(image, sample, preprocessed)
            if rescale:  # as mmdet's predict_by_feat: back to the original image's pixels
                dets.bboxes = dets.bboxes / dets.bboxes.new_tensor(
                    sample.scale_factor).repeat(2)
            sample.pred_instances = dets
        return samples

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        """Sliced detections of a preprocessed batch of full-resolution images.

        Prefer :meth:`test_step` (what the Runner calls): it crops tiles before the data
        preprocessor, so the whole image never reaches the device.

        Args:
            batch_inputs (Tensor): ``(B, 3, H, W)`` images after the data preprocessor.
            batch_data_samples (list[DetDataSample]): their samples (``img_shape``,
                ``scale_factor``).
            rescale (bool): map boxes to the original images through ``scale_factor``.

        Returns:
            list[DetDataSample]: the samples with ``pred_instances``: ``bboxes`` ``(N, 4)``,
            ``scores`` ``(N,)`` descending, ``labels`` ``(N,)`` class indices.
        """
        return self._attach(batch_inputs, batch_data_samples, True, rescale)

    def test_step(self, data: Union[dict, tuple, list]) -> SampleList:
        """Sliced detections of a batch from the test pipeline (full-resolution images).

        Args:
            data (dict): ``inputs``: list of ``(3, H, W)`` uint8 images (or a stacked batch),
                ``data_samples``: their samples. Each image's tiles go through the data
                preprocessor ``slice_cfg.batch_size`` at a time.

        Returns:
            list[DetDataSample]: as :meth:`predict`, boxes in original image pixels.
        """
        with torch.no_grad():
            return self._attach(data['inputs'], data['data_samples'], False, True)

    val_step = test_step
