"""mmdet's ``DeltaXYWHBBoxCoder`` for a whole batch without a host sync: the box targets of
training (:func:`encode_boxes`) and the boxes of inference (:func:`decode_boxes`).

mmdet's ``bbox2delta`` and ``delta2bbox`` build the coder's means and stds with ``new_tensor``
on every call: a copy from pageable memory that waits for the whole CUDA stream. Here the same
operations run in the same order (the same values, bit for bit), with the means and stds copied
to the device once and reused. Any other coder is called as it is.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

from ...utils.compiling import is_compiling
from .retina_gts import host_tensor

#: DeltaXYWHBBoxCoder.decode's default bound on dw, dh: |log(16 / 1000)|
MAX_RATIO = abs(math.log(16 / 1000))
# (means, stds, dtype, device) -> (2, 4) device tensor; a handful of entries per process
_CONSTANTS: Dict[tuple, Tensor] = {}


def plain_delta_coder(bbox_coder: object) -> bool:
    """mmdet's ``DeltaXYWHBBoxCoder`` itself (a subclass may change the math)."""
    return type(bbox_coder) is DeltaXYWHBBoxCoder


def coder_constants(bbox_coder: DeltaXYWHBBoxCoder, dtype: torch.dtype,
                    device: torch.device) -> Tensor:
    """The coder's means and stds as one contiguous ``(2, 4)`` tensor on ``device``: copied
    there once per value, dtype and device, then reused (read only), so a call queues no copy
    at all."""
    key = (tuple(bbox_coder.means), tuple(bbox_coder.stds), dtype, torch.device(device))
    if is_compiling():  # traced by dynamo: a constant of the graph, no cache mutation in it
        return host_tensor([key[0], key[1]], dtype, device)
    pair = _CONSTANTS.get(key)
    if pair is None:
        pair = _CONSTANTS[key] = host_tensor([key[0], key[1]], dtype, device)
    return pair


def _means_stds(bbox_coder: DeltaXYWHBBoxCoder, dtype: torch.dtype,
                device: torch.device) -> Tuple[Tensor, Tensor]:
    """The coder's ``(1, 4)`` means and stds (:func:`coder_constants`)."""
    pair = coder_constants(bbox_coder, dtype, device)
    return pair[0:1], pair[1:2]


def encode_boxes(bbox_coder: object, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """``bbox_coder.encode`` of ``(N, 4)`` pairs; for ``DeltaXYWHBBoxCoder`` without a host
    sync.

    The same operations in the same order as mmdet's ``bbox2delta``, so the same values, with
    the means and stds of :func:`_means_stds`. Other coders are called as they are.

    Args:
        bbox_coder (object): the head's box coder.
        anchors (Tensor): ``(N, 4)`` x1y1x2y2 anchors.
        gt_boxes (Tensor): ``(N, 4)`` x1y1x2y2 target boxes.

    Returns:
        Tensor: ``(N, encode_size)`` regression targets.
    """
    if not plain_delta_coder(bbox_coder):
        return bbox_coder.encode(anchors, gt_boxes)
    p, g = anchors.float().unbind(-1), gt_boxes.float().unbind(-1)
    px, py = (p[0] + p[2]) * 0.5, (p[1] + p[3]) * 0.5
    pw, ph = p[2] - p[0], p[3] - p[1]
    gx, gy = (g[0] + g[2]) * 0.5, (g[1] + g[3]) * 0.5
    gw, gh = g[2] - g[0], g[3] - g[1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw),
                          torch.log(gh / ph)], dim=-1)
    means, stds = _means_stds(bbox_coder, torch.float32, deltas.device)
    return deltas.sub_(means).div_(stds)


def decode_boxes(bbox_coder: object, anchors: Tensor, deltas: Tensor) -> Tensor:
    """Decodes ``(B, M, D)`` deltas on ``(B, M, 4)`` anchors into ``(B, M, 4)`` x1y1x2y2 boxes
    as ``bbox_coder.decode`` does (no clipping: see :func:`~.retina_gts.clip_boxes`); for mmdet's
    ``DeltaXYWHBBoxCoder`` without a host sync (:func:`delta_xywh_decode`)."""
    flat_anchors = anchors.reshape(-1, anchors.size(-1))
    flat_deltas = deltas.reshape(-1, deltas.size(-1))
    if plain_delta_coder(bbox_coder) and not torch.onnx.is_in_onnx_export():
        boxes = delta_xywh_decode(bbox_coder, flat_anchors, flat_deltas)
    else:
        boxes = get_box_tensor(bbox_coder.decode(flat_anchors, flat_deltas))
    return boxes.reshape(anchors.size(0), -1, 4)


def delta_xywh_decode(bbox_coder: DeltaXYWHBBoxCoder, anchors: Tensor, deltas: Tensor) -> Tensor:
    """mmdet's ``delta2bbox`` (``DeltaXYWHBBoxCoder.decode`` without ``max_shape``): the same
    operations in the same order, so the same values, with the means and stds of
    :func:`_means_stds`.

    Args:
        bbox_coder (DeltaXYWHBBoxCoder): gives ``means``, ``stds``, ``add_ctr_clamp``,
            ``ctr_clamp``.
        anchors (Tensor): ``(N, 4)`` x1y1x2y2.
        deltas (Tensor): ``(N, 4)`` (dx, dy, dw, dh).

    Returns:
        Tensor: ``(N, 4)`` x1y1x2y2 boxes in ``deltas``' dtype.
    """
    if deltas.size(0) == 0:
        return deltas
    means, stds = _means_stds(bbox_coder, deltas.dtype, deltas.device)
    denorm = deltas * stds + means
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (anchors[:, :2] + anchors[:, 2:]) * 0.5
    pwh = anchors[:, 2:] - anchors[:, :2]
    dxy_wh = pwh * dxy
    if bbox_coder.add_ctr_clamp:
        dxy_wh = torch.clamp(dxy_wh, max=bbox_coder.ctr_clamp, min=-bbox_coder.ctr_clamp)
        dwh = torch.clamp(dwh, max=MAX_RATIO)
    else:
        dwh = dwh.clamp(min=-MAX_RATIO, max=MAX_RATIO)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
