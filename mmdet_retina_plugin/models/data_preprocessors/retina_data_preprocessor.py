"""mmdet's ``DetDataPreprocessor`` handing the network channels-last batches at test time,
optionally padded to a few fixed sizes (static shapes for compiled models).

On CPU, oneDNN's convolutions read and write NHWC natively; given NCHW tensors, every
convolution reorders its input and output. A channels-last input batch makes the whole network
(convolutions, batch norm, ReLU, pooling and additions keep the format) run without those
reorders (what that saves end to end: ``docs/benchmarks.md``, Inference). Only the memory
layout changes: the tensors, their shapes and indexing are the same, the values equal to
float32 rounding (oneDNN's NHWC kernels sum in another order).

Training batches stay NCHW by default: training numerics stay bit-identical to mmdet's. On a
GPU, channels-last training batches (``train_channels_last=True``) with channels-last weights
(``RetinaChannelsLastHook``) spare cuDNN its NCHW<->NHWC conversions around every convolution
(``configs/retinanet/retina-plugin_r50_fpn_gpu-1x_coco.py`` and its bf16 variant).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.registry import MODELS

from ...utils.errors import RetinaConfigError
from .bucket_pad import RetinaBucketPad


@MODELS.register_module()
class RetinaDataPreprocessor(DetDataPreprocessor):
    """``DetDataPreprocessor`` (every argument of it is accepted) whose test batches are
    channels-last.

    Args:
        test_channels_last (bool): hand the network channels-last inputs when
            ``training=False`` (inference, validation, test).
        train_channels_last (bool): the same for training batches.
        shape_buckets (Sequence[Tuple[int, int]], optional): ``(h, w)`` sizes; every batch,
            training and test, is padded to the smallest that holds it
            (:class:`~.RetinaBucketPad`), so that a compiled model
            (``RetinaNetHead(compile_cfg=...)``) meets a few shapes only. None: mmdet's
            padding to the batch's largest image.
        **kwargs: ``DetDataPreprocessor``'s arguments (``mean``, ``std``, ``bgr_to_rgb``,
            ``pad_size_divisor``, ``pad_value``, ``batch_augments``, ``non_blocking``, ...).
            ``non_blocking=True`` copies the batch to the GPU asynchronously; with the
            dataloader's ``pin_memory=True`` the copy overlaps the previous step's kernels.
    """

    def __init__(self, test_channels_last: bool = True, train_channels_last: bool = False,
                 shape_buckets: Optional[Sequence[Tuple[int, int]]] = None,
                 **kwargs: Any) -> None:
        for name, value in (('test_channels_last', test_channels_last),
                            ('train_channels_last', train_channels_last)):
            if not isinstance(value, bool):
                raise RetinaConfigError(f'{name} must be True or False, got {value!r}')
        super().__init__(**kwargs)
        self.test_channels_last = test_channels_last
        self.train_channels_last = train_channels_last
        self.bucket_pad = None if shape_buckets is None else RetinaBucketPad(
            shape_buckets, img_pad_value=self.pad_value)

    def forward(self, data: dict, training: bool = False) -> dict:
        """``DetDataPreprocessor.forward``, then every batch padded to its shape bucket (with
        ``shape_buckets``); ``inputs`` ``(B, 3, H, W)`` is channels-last (same shape and
        values, NHWC strides) where the flags say so."""
        data = super().forward(data, training)
        if self.bucket_pad is not None:
            data['inputs'], data['data_samples'] = self.bucket_pad(data['inputs'],
                                                                   data['data_samples'])
        if self.train_channels_last if training else self.test_channels_last:
            data['inputs'] = data['inputs'].contiguous(memory_format=torch.channels_last)
        return data
