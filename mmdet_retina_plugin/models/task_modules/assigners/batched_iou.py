"""Pairwise IoU / IoF that is bitwise equal to mmdet's ``bbox_overlaps`` with fewer temporaries.

mmdet's ``bbox_overlaps`` (``is_aligned=False``) materialises ``lt``, ``rb`` and ``wh`` as
``(..., M, N, 2)`` tensors plus ``overlap``, ``union`` and ``ious`` — about nine ``M*N`` buffers.
Here the same floating-point operations run in the same order on per-coordinate ``(..., M, N)``
buffers, reusing them in place, so at most three ``M*N`` buffers are alive and every value is
bitwise identical (each op is IEEE correctly rounded, so layout and vectorisation do not matter).
Bitwise equality matters because the assigner breaks ties with ``==`` on these values.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ....utils.errors import RetinaConfigError

_MODES = ('iou', 'iof')


def box_areas(boxes: Tensor) -> Tensor:
    """Areas as mmdet computes them: ``(x2 - x1) * (y2 - y1)``, no clamping.

    Args:
        boxes (Tensor): ``(..., N, 4)`` boxes in ``x1y1x2y2``.

    Returns:
        Tensor: ``(..., N)`` areas.
    """
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


# Assignment needs IoU values, not their gradient; boxes that require grad (RepPoints assigns its
# predicted boxes) would also refuse the in-place and out= ops below.
@torch.no_grad()
def pairwise_overlaps(boxes1: Tensor, boxes2: Tensor, mode: str = 'iou', eps: float = 1e-6,
                      area1: Tensor | None = None, area2: Tensor | None = None) -> Tensor:
    """IoU (or IoF w.r.t. ``boxes1``) of every box pair, equal to mmdet's ``bbox_overlaps``.

    Leading batch dimensions broadcast, so ``(1, M, 4)`` anchors against ``(B, N, 4)`` boxes
    give ``(B, M, N)`` without copying the anchors.

    Args:
        boxes1 (Tensor): ``(..., M, 4)`` boxes in ``x1y1x2y2``.
        boxes2 (Tensor): ``(..., N, 4)`` boxes in ``x1y1x2y2``.
        mode (str): ``'iou'`` (intersection over union) or ``'iof'`` (intersection over the
            area of ``boxes1``, the "foreground").
        eps (float): lower bound of the denominator, as in mmdet (``1e-6``).
        area1 (Tensor, optional): ``(..., M)`` precomputed :func:`box_areas` of ``boxes1``.
        area2 (Tensor, optional): ``(..., N)`` precomputed :func:`box_areas` of ``boxes2``
            (unused for ``'iof'``).

    Returns:
        Tensor: ``(..., M, N)`` overlaps in ``[0, 1]`` for well-formed boxes.
    """
    if mode not in _MODES:
        raise RetinaConfigError(f'mode must be one of {_MODES}, got {mode!r}')
    # Contiguous per-coordinate planes: broadcasting strided (..., 4) slices is several times
    # slower than broadcasting contiguous ones.
    x1a, y1a, x2a, y2a = boxes1.movedim(-1, 0)[..., :, None].contiguous()
    x1b, y1b, x2b, y2b = boxes2.movedim(-1, 0)[..., None, :].contiguous()
    # Same op order as mmdet: wh = clamp(min(x2) - max(x1), 0); overlap = w * h.
    w = torch.minimum(x2a, x2b)
    tmp = torch.maximum(x1a, x1b)
    w.sub_(tmp).clamp_(min=0)
    h = torch.minimum(y2a, y2b, out=tmp)
    h.sub_(torch.maximum(y1a, y1b)).clamp_(min=0)
    overlap = w.mul_(h)
    if area1 is None:
        area1 = box_areas(boxes1)
    if mode == 'iou':
        if area2 is None:
            area2 = box_areas(boxes2)
        # (area1 + area2) - overlap, exactly mmdet's association order.
        union = torch.add(area1[..., :, None], area2[..., None, :], out=h)
        union.sub_(overlap).clamp_(min=eps)
    else:
        union = area1[..., :, None].clamp(min=eps)
    return overlap.div_(union)
