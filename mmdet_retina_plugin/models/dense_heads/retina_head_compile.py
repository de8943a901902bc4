"""The head's dense work compiled whole with ``torch.compile`` (``RetinaNetHead(compile_cfg=)``).

Two regions, each from the pyramid features on, with shapes that follow from the batch's alone:

* training, :func:`dense_losses`: both subnets, the targets (assignment included), the
  normaliser and the per-level losses, forward and backward;
* inference, :func:`dense_candidates`: both subnets and the candidate selection, everything up
  to the NMS (``nms_pre > 0``; with ``nms_pre <= 0`` the top-k's size is read from the device
  first and inference runs eager).

Eager, these are several hundred small kernels per step, whose launches bind the host at small
batches on a GPU. Compiled, inductor fuses the elementwise work; with ``mode='reduce-overhead'``
each region is replayed as a CUDA graph, one launch. A region recompiles when its input shapes
change: the static-shape mode pads gts to ``static_num_gts`` and images to a few fixed sizes
(``RetinaDataPreprocessor(shape_buckets=...)``), so each size compiles once.

Compiling never breaks a run (:class:`~mmdet_retina_plugin.utils.compiling.Compiler`): where a
compiled call raises and the eager call does not, the head warns once and stays eager (an error
of the eager code itself is raised as it is).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .retina_gts import GtBatch
from .retina_post_processing import Candidates, select_candidates
from .retina_post_settings import PostProcessSettings


def dense_losses(head: torch.nn.Module, feats: Tuple[Tensor, ...], anchors: Tensor,
                 valid: Tensor, gts: GtBatch) -> Tuple[Tensor, Tensor, Tensor]:
    """Training's region: the head's forward and :meth:`retina_losses`.

    Args:
        head (RetinaNetHead): the head.
        feats (Tuple[Tensor, ...]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
        anchors (Tensor): ``(S, 4)`` anchors of all levels, ``S = sum(Hi*Wi*A)``.
        valid (Tensor): ``(B, S)`` bool, False on each image's padding.
        gts (GtBatch): the padded gts.

    Returns:
        Tuple[Tensor, Tensor, Tensor]: ``loss_cls`` and ``loss_bbox`` ``(L,)`` per level and
        the ``(2, B)`` counts of non-finite and degenerate gts left out.
    """
    cls_scores, bbox_preds = head(feats)
    return head.retina_losses(cls_scores, bbox_preds, anchors, valid, gts)


def dense_candidates(head: torch.nn.Module, feats: Tuple[Tensor, ...],
                     anchors: Tensor, settings: PostProcessSettings,
                     img_hw: Tensor, scale_factors: Optional[Tensor]) -> Candidates:
    """Inference's region: the head's forward and :func:`select_candidates` with ``nms_pre``
    pairs per level.

    Args:
        head (RetinaNetHead): the head.
        feats (Tuple[Tensor, ...]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
        anchors (Tensor): ``(sum(Hi*Wi*A), 4)`` anchors of all levels.
        settings (PostProcessSettings): the test settings, ``nms_pre > 0``.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)``.
        scale_factors (Tensor, optional): ``(B, 2)`` ``(w_scale, h_scale)`` to map boxes back
            to the original images; None keeps input pixels.

    Returns:
        Candidates: ``(B, M, ...)`` candidates before NMS (``select_candidates``).
    """
    cls_scores, bbox_preds = head(feats)
    return select_candidates(cls_scores, bbox_preds, anchors, head.cls_out_channels,
                             head.bbox_coder, settings, settings.nms_pre, img_hw, scale_factors)
