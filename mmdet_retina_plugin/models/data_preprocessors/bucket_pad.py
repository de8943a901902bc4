"""Pads each batch to the smallest of a few fixed sizes: static shapes for compiled models.

mmdet pads a batch to its largest image (rounded up to ``pad_size_divisor``), so nearly every
batch has a shape of its own, and a compiled region (or a CUDA graph) is built again for each.
mmdet's ``BatchFixedSizePad`` pads every batch to one size, which with keep-ratio resizing must
hold both orientations (1344 x 1344 for ``Resize(scale=(1333, 800))``): 68 % more pixels than a
landscape 800 x 1344. With a few buckets, e.g. ``[(800, 1344), (1344, 800)]`` and mmdet's
``AspectRatioBatchSampler`` (batches of one orientation), every batch of that resize lands in
one of two shapes.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.structures import PixelData
from torch import Tensor

from ...utils.errors import RetinaConfigError


def check_sizes(sizes: Sequence[Sequence[int]]) -> List[Tuple[int, int]]:
    """``sizes`` as ``(h, w)`` int pairs >= 1, or RetinaConfigError naming the field."""
    try:
        pairs = [tuple(size) for size in sizes]
    except TypeError:
        pairs = None
    if not pairs or any(len(p) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                               and v >= 1 for v in p) for p in pairs):
        raise RetinaConfigError(f'sizes must be a non-empty list of (h, w) pairs of ints >= 1, '
                                f'got {sizes!r}')
    return pairs


@MODELS.register_module()
class RetinaBucketPad(nn.Module):
    """Pads a batch (bottom and right, as mmdet pads) to the smallest listed size holding it.

    A batch augment (``DetDataPreprocessor(batch_augments=[...])``, training only) or, through
    ``RetinaDataPreprocessor(shape_buckets=...)``, applied to every batch. Arguments as mmdet's
    ``BatchFixedSizePad``, with a list of sizes instead of one.

    Args:
        sizes (Sequence[Tuple[int, int]]): ``(h, w)`` sizes; a batch goes to the one of least
            area that holds it (the first among equal areas). A batch larger than every size
            keeps its shape (warned once: a compiled model meets a new shape).
        img_pad_value (int): value of padded pixels.
        pad_mask (bool): pad the gt instance masks too.
        mask_pad_value (int): value of padded mask pixels.
        pad_seg (bool): pad the semantic segmentation maps too.
        seg_pad_value (int): value of padded segmentation pixels.
    """

    def __init__(self, sizes: Sequence[Tuple[int, int]], img_pad_value: int = 0,
                 pad_mask: bool = False, mask_pad_value: int = 0, pad_seg: bool = False,
                 seg_pad_value: int = 255) -> None:
        super().__init__()
        self.sizes = sorted(check_sizes(sizes), key=lambda hw: hw[0] * hw[1])
        self.img_pad_value = img_pad_value
        self.pad_mask = pad_mask
        self.mask_pad_value = mask_pad_value
        self.pad_seg = pad_seg
        self.seg_pad_value = seg_pad_value
        self._warned = False

    def bucket(self, height: int, width: int) -> Optional[Tuple[int, int]]:
        """The size a ``height x width`` batch is padded to; None when none holds it."""
        return next(((h, w) for h, w in self.sizes if h >= height and w >= width), None)

    def forward(self, inputs: Tensor, data_samples: Optional[list] = None
                ) -> Tuple[Tensor, Optional[list]]:
        """Pads the batch.

        Args:
            inputs (Tensor): ``(B, C, H, W)`` images.
            data_samples (list, optional): their ``DetDataSample``; ``batch_input_shape``
                becomes the bucket's size, masks and segmentation maps are padded where asked.
                ``pad_shape`` (each image padded to the size divisor) stays: the extra padding
                is the batch's, like mmdet's padding to the largest image, so the anchors over
                it stay invalid and training sees what it saw without the buckets.

        Returns:
            Tuple[Tensor, list | None]: ``(B, C, h, w)`` images (the same tensor when no
            padding is needed) and the data samples.
        """
        src_h, src_w = inputs.shape[-2:]
        size = self.bucket(src_h, src_w)
        if size is None:
            if not self._warned:
                self._warned = True
                warnings.warn(f'RetinaBucketPad: a {src_h}x{src_w} batch is larger than every '
                              f'size of {self.sizes}; it keeps its shape (warned once)')
            return inputs, data_samples
        dst_h, dst_w = size
        if (src_h, src_w) != size:
            inputs = F.pad(inputs, (0, dst_w - src_w, 0, dst_h - src_h),
                           value=self.img_pad_value)
        for sample in data_samples or ():
            sample.set_metainfo({'batch_input_shape': size})
            if self.pad_mask:
                sample.gt_instances.masks = sample.gt_instances.masks.pad(
                    size, pad_val=self.mask_pad_value)
            if self.pad_seg:
                seg = sample.gt_sem_seg.sem_seg
                sample.gt_sem_seg = PixelData(sem_seg=F.pad(
                    seg, (0, dst_w - seg.shape[-1], 0, dst_h - seg.shape[-2]),
                    value=self.seg_pad_value))
        return inputs, data_samples
