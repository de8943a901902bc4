"""The ONNX-specific pieces of RetinaNet's post-processing in an exported graph.

The graph selects its candidates with the PyTorch head's own steps
(``retina_post_processing.select_candidates``) and shifts classes apart with its NMS's
(``batched_nms.class_offset_boxes``); where the head runs its batched NMS and splits the result
by image, the graph needs ONNX's ``NonMaxSuppression`` and padded outputs. Here: a per-level
top-k of fixed width, the NMS op (a torch custom op with a translation for each of
``torch.onnx.export``'s exporters) and the packing of its variable-length result into padded
``(B, max_per_img)`` outputs.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op
from torch import Tensor

# Score of padded candidates and of candidates that fail ``score_thr`` / ``min_bbox_size``:
# below any sigmoid output, and below the NMS op's score threshold.
REJECTED_SCORE = -1.0
NMS_SCORE_THRESHOLD = -0.5


def level_topk(logits: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The ``k`` largest logits of each row, with a static output width (the exporter's
    ``topk`` of ``select_pairs``).

    Rows narrower than ``k`` (small feature maps) are padded with ``-inf`` first, so ``TopK``'s
    ``k`` never exceeds the row and the graph keeps one shape for every input size.

    Args:
        logits (Tensor): ``(B, N)``.
        k (int): candidates per row; <= 0: every column, in place (``nms_pre <= 0``).

    Returns:
        tuple: ``values`` ``(B, k)`` descending (``-inf`` where the row had fewer than ``k``)
        and their column indexes ``(B, k)``, clamped to ``N - 1`` on the padding; with
        ``k <= 0``, ``logits`` and ``(B, N)`` column indexes.
    """
    if k <= 0:
        return logits, torch.arange(logits.size(1), device=logits.device).expand_as(logits)
    pad = logits.new_full((logits.size(0), k), float('-inf'))
    values, cols = torch.cat([logits, pad], 1).topk(k, dim=1)
    return values, cols.clamp(max=logits.size(1) - 1)


@torch.library.custom_op('mmdet_retina_plugin::onnx_nms', mutates_args=())
def onnx_nms(boxes: Tensor, scores: Tensor, max_per_img: int, iou_threshold: float) -> Tensor:
    """ONNX ``NonMaxSuppression`` over one score row per image (PyTorch reference: mmcv nms).

    Args:
        boxes (Tensor): ``(B, M, 4)`` x1y1x2y2.
        scores (Tensor): ``(B, 1, M)``; candidates at or below ``NMS_SCORE_THRESHOLD`` are
            ignored.
        max_per_img (int): boxes kept per image at most.
        iou_threshold (float): a box is suppressed by a kept one of higher score when their IoU
            exceeds this.

    Returns:
        Tensor: ``(S, 3)`` int64 ``[image, 0, candidate]`` rows, per image by descending score.
    """
    from mmcv.ops import nms

    rows = []
    for i in range(boxes.size(0)):
        cand = (scores[i, 0] > NMS_SCORE_THRESHOLD).nonzero().squeeze(1)
        keep = cand[nms(boxes[i, cand], scores[i, 0, cand], iou_threshold)[1][:max_per_img]]
        rows.append(torch.stack([torch.full_like(keep, i), torch.zeros_like(keep), keep], 1))
    return torch.cat(rows)


@onnx_nms.register_fake
def _onnx_nms_shape(boxes: Tensor, scores: Tensor, max_per_img: int,
                    iou_threshold: float) -> Tensor:
    num = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((num, 3), dtype=torch.int64)


def onnx_nms_translation(boxes: FLOAT, scores: FLOAT, max_per_img: int,
                         iou_threshold: float) -> INT64:
    """:func:`onnx_nms` for the dynamo exporter: ``NonMaxSuppression`` on corner boxes."""
    return op.NonMaxSuppression(boxes, scores, op.Constant(value_ints=[max_per_img]),
                                op.Constant(value_floats=[iou_threshold]),
                                op.Constant(value_floats=[NMS_SCORE_THRESHOLD]),
                                center_point_box=0)


def _onnx_nms_symbolic(g: Any, boxes: Any, scores: Any, max_per_img: Any,
                       iou_threshold: Any) -> Any:
    """:func:`onnx_nms` for the TorchScript exporter: the same ``NonMaxSuppression`` node."""
    from torch.onnx import symbolic_helper

    def const(value: Any, kind: str, dtype: torch.dtype) -> Any:
        return g.op('Constant', value_t=torch.tensor(
            [symbolic_helper._maybe_get_const(value, kind)], dtype=dtype))

    return g.op('NonMaxSuppression', boxes, scores, const(max_per_img, 'i', torch.int64),
                const(iou_threshold, 'f', torch.float32),
                const(NMS_SCORE_THRESHOLD, 'f', torch.float32), center_point_box_i=0)


# NonMaxSuppression exists from opset 10; registered for every opset from there on
torch.onnx.register_custom_op_symbolic('mmdet_retina_plugin::onnx_nms', _onnx_nms_symbolic, 10)


def pack_detections(selected: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor,
                    max_per_img: int) -> Tuple[Tensor, Tensor]:
    """Scatters NMS's selection into fixed-size outputs.

    Args:
        selected (Tensor): ``(S, 3)`` rows of :func:`onnx_nms`, grouped by image.
        boxes (Tensor): ``(B, M, 4)`` unshifted boxes.
        scores (Tensor): ``(B, M)``.
        labels (Tensor): ``(B, M)``.
        max_per_img (int): output slots per image.

    Returns:
        tuple: ``dets`` ``(B, max_per_img, 5)`` ``[x1, y1, x2, y2, score]`` and ``labels``
        ``(B, max_per_img)`` int64; unused slots hold zeros and label -1.
    """
    batch = boxes.size(0)
    img, cand = selected[:, 0], selected[:, 2]
    per_img = (img[:, None] == torch.arange(batch, device=img.device)).sum(0)
    slot = torch.arange(img.size(0), device=img.device) - (per_img.cumsum(0) - per_img)[img]
    dets = boxes.new_zeros((batch, max_per_img, 5))
    dets[img, slot] = torch.cat([boxes[img, cand], scores[img, cand][:, None]], 1)
    out_labels = labels.new_full((batch, max_per_img), -1)
    out_labels[img, slot] = labels[img, cand]
    return dets, out_labels
