"""Jitter of repeated gt boxes (V3Det): mmdet's ``perm_repeat_bboxes`` numbers, random draws
included.

V3Det has many identical boxes with different labels; a max-IoU assigner would give every prior
of such a group to one of them. Scaling each copy's coordinates by a random factor near 1 makes
them distinct while keeping them close to the original. mmdet draws the factors from the global
generator of the boxes' device, one ``(n, 4)`` draw per group of ``n`` equal boxes, groups in
sorted order, redrawing a group whose jittered boxes are degenerate or too far from the
original; drawing the same numbers in the same order reproduces its result for a given seed.
The groups and redraws are found on the host (``nonzero``, ``tolist``), so the jitter makes the
host wait for the device.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor

from ....utils.errors import RetinaConfigError

# mmdet: a group is redrawn at most this many times; the last draw is kept even if invalid.
MAX_REDRAWS = 5
# mmdet's redraws test IoU against its default threshold, not the configured one.
REDRAW_IOU_THR = 0.97
PERM_KEYS = ('iou_thr', 'perm_range')


def check_perm_repeat_cfg(cfg: Mapping | None) -> dict | None:
    """Validated copy of ``perm_repeat_gt_cfg`` (None: no jitter).

    Args:
        cfg (Mapping, optional): ``iou_thr`` (float in ``[0, 1]``, default 0.97): least IoU of
            a jittered box with the original; ``perm_range`` (float in ``[0, 1)``, default
            0.01): factors are drawn from ``[1 - perm_range, 1 + perm_range]``.

    Returns:
        dict | None: the two values, defaults filled in.
    """
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping) or set(cfg) - set(PERM_KEYS):
        raise RetinaConfigError(f'perm_repeat_gt_cfg must be None or a dict with keys among '
                                f'{PERM_KEYS}, got {cfg!r}')
    iou_thr = float(cfg.get('iou_thr', REDRAW_IOU_THR))
    perm_range = float(cfg.get('perm_range', 0.01))
    if not 0.0 <= iou_thr <= 1.0:
        raise RetinaConfigError(f'perm_repeat_gt_cfg iou_thr must be in [0, 1], '
                                f'got {iou_thr}')
    if not 0.0 <= perm_range < 1.0:
        raise RetinaConfigError(f'perm_repeat_gt_cfg perm_range must be in [0, 1), '
                                f'got {perm_range}')
    return dict(iou_thr=iou_thr, perm_range=perm_range)


def jitter_repeated_boxes(boxes: Tensor, iou_calculator: Callable[[Tensor, Tensor], Tensor],
                          iou_thr: float, perm_range: float) -> Tensor:
    """Copies of ``boxes`` where every box that occurs more than once is jittered.

    Args:
        boxes (Tensor): ``(G, 4)`` x1y1x2y2 gt boxes of one image.
        iou_calculator (Callable): ``iou_calculator(a, b)`` -> ``(len(a), len(b))`` IoUs, the
            assigner's calculator.
        iou_thr (float): least IoU of each jittered copy with the original on the first draw.
        perm_range (float): first draw's factors lie in ``[1 - perm_range, 1 + perm_range]``.

    Returns:
        Tensor: ``(G, 4)``; boxes that occur once are unchanged.
    """
    if boxes.size(0) < 2:
        return boxes.clone()
    out = boxes.clone()
    _, group_of, counts = torch.unique(boxes, dim=0, return_inverse=True, return_counts=True)
    for group in torch.nonzero(counts > 1).flatten().tolist():  # sorted order, as mmdet
        rows = torch.nonzero(group_of == group).flatten()
        out[rows] = _jitter_group(boxes[rows], iou_calculator, iou_thr, perm_range)
    return out


def _jitter_group(copies: Tensor, iou_calculator: Callable[[Tensor, Tensor], Tensor],
                  iou_thr: float, perm_range: float) -> Tensor:
    """``copies`` (``(n, 4)``, all equal) times random factors, redrawn while invalid."""
    redraw = 0
    while True:
        factors = torch.empty_like(copies).uniform_(1 - perm_range, 1 + perm_range)
        jittered = copies * factors
        degenerate = bool((jittered[:, 2:] - jittered[:, :2] <= 0).any())
        if redraw == MAX_REDRAWS or not (
                degenerate or (iou_calculator(copies[:1], jittered) < iou_thr).any()):
            return jittered
        # mmdet narrows the range by 0.001 * (redraws so far) each time, at least to 1e-3.
        iou_thr = REDRAW_IOU_THR
        perm_range = max(perm_range - redraw * 0.001, 1e-3)
        redraw += 1
