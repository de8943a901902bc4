"""Post-processing of an anchor head's outputs for a whole batch, on fixed shapes.

The steps of mmdet's ``BaseDenseHead.predict_by_feat`` (and detectron2's
``_decode_per_level_predictions``), with the settings of :class:`~.PostProcessSettings`. Up to
the NMS every tensor's shape follows from the batch's shapes and the settings alone (no
``nonzero``, no ``.item()``), so the host waits for the device twice per batch, both in step 5.
Steps 1 to 4 are :func:`select_candidates`, which the ONNX exporter calls too:

1. ``select_pairs`` (``retina_pair_selection.py``): per level, for the whole batch, the
   ``nms_pre`` best (anchor, class) pairs of each image, each named by its index in mmdet's
   order of all the batch's pairs, from which steps 2 and 3 read it with no per-level work;
   whether a pair's score passes ``score_thr`` is a mask carried along, not a filter;
2. the deltas (:func:`gather_deltas`) and anchors of the selected pairs;
3. :func:`decode_boxes`, :func:`clip_boxes`, :func:`rescale_boxes`;
4. :func:`min_size_mask`, and-ed into the mask (mmdet's ``min_bbox_size``);
5. :func:`detections_by_image`: one class-wise NMS for the whole batch
   (``models/layers/batched_nms.py``: two host reads), ``max_per_img`` and the split into
   per-image ``InstanceData``; without NMS, the valid candidates (one host read). NMS configs
   that module does not implement (e.g. ``soft_nms``) go through mmcv's ``batched_nms`` image
   by image, which reads the host once or more per image.

Steps 2 to 4 are some forty ATen ops per batch, each a launch the host pays for on a GPU.
Where Triton kernels run (CUDA), in fp32 and for mmdet's ``DeltaXYWHBBoxCoder`` itself, they
are one launch of ``retina_candidates_triton.py`` (the same operations in the same order) after
one copy of the levels' deltas; a kernel that fails warns once, and the ATen ops run from then
on.

With ``nms_pre <= 0`` (every pair above ``score_thr``) the top-k of step 1 is sized by the
largest per-image candidate count of the levels, one more host read (``topk_size``).
"""
from __future__ import annotations

from itertools import accumulate
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from mmcv.ops import batched_nms
from mmdet.utils import InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ...utils.compiling import is_compiling
from ...utils.fallback import Switch, fast_or_plain
from ...utils.triton_device import on_triton_device
from ..layers.batched_nms import batched_nms_padded
from ..layers.batched_nms import supports as batched_nms_supports
from .retina_box_coding import MAX_RATIO, coder_constants, decode_boxes, plain_delta_coder
from .retina_gts import clip_boxes, host_tensor
from .retina_pair_selection import TopK, is_pixel_major, select_pairs
from .retina_post_settings import PostProcessSettings


def concat_deltas(bbox_preds: Sequence[Tensor], num_base: int
                  ) -> Tuple[Tensor, Tuple[int, int, int, int]]:
    """Every level's deltas in one tensor, with one copy (a small tensor: ``4/K`` of the
    logits), read in their memory order.

    Args:
        bbox_preds (Sequence[Tensor]): ``[(B, Ab*D, Hi, Wi)]`` deltas (``D`` = the coder's
            ``encode_size``), any memory layout.
        num_base (int): ``Ab``.

    Returns:
        Tuple[Tensor, Tuple[int, int, int, int]]: ``(B, sum(Hi*Wi), Ab*D)`` for channels-last
        maps, else ``(B, Ab*D, sum(Hi*Wi))``; and its element strides along the image, base
        anchor, delta and pixel axes (the pixel's is 1 for the second form only).
    """
    preds = [p.detach() for p in bbox_preds]
    if is_pixel_major(preds):  # rows of (anchor, delta) pairs already
        flat = torch.cat([p.permute(0, 2, 3, 1).flatten(1, 2) for p in preds], 1)
        return flat, (flat.stride(0), flat.size(2) // num_base, 1, flat.stride(1))
    flat = torch.cat([p.flatten(2) for p in preds], 2)
    return flat, (flat.stride(0), flat.size(1) // num_base * flat.stride(1), flat.stride(1), 1)


def gather_deltas(bbox_preds: Sequence[Tensor], anchor_ids: Tensor, num_base: int) -> Tensor:
    """The deltas of the anchors ``anchor_ids``: :func:`concat_deltas` and one gather.

    Args:
        bbox_preds (Sequence[Tensor]): ``[(B, Ab*D, Hi, Wi)]`` deltas, any memory layout.
        anchor_ids (Tensor): ``(B, M)`` long, in mmdet's anchor order (level, row, column, base
            anchor), in ``[0, sum(Hi*Wi) * Ab)``.
        num_base (int): ``Ab``.

    Returns:
        Tensor: ``(B, M, D)``.
    """
    flat, strides = concat_deltas(bbox_preds, num_base)
    if strides[3] != 1:  # pixel-major: (B, S, D) rows of one anchor's deltas
        flat = flat.unflatten(2, (num_base, -1)).flatten(1, 2)
        return flat.gather(1, anchor_ids[..., None].expand(-1, -1, flat.size(2)))
    flat = flat.unflatten(1, (num_base, -1))
    batch_ids = torch.arange(anchor_ids.size(0), device=anchor_ids.device)[:, None]
    # (B, Ab, D, sum(Hi*Wi)) indexed by (image, base, pixel): (B, M, D)
    return flat[batch_ids, anchor_ids % num_base, :, anchor_ids // num_base]


def rescale_boxes(bboxes: Tensor, scale_factors: Tensor) -> Tensor:
    """Maps ``(B, M, 4)`` boxes back to the original images, dividing by each image's
    ``(B, 2)`` ``scale_factor`` ``(w_scale, h_scale)`` (mmdet's ``img_meta['scale_factor']``)."""
    return bboxes * (1 / scale_factors).repeat(1, 2)[:, None]


def min_size_mask(bboxes: Tensor, min_size: float) -> Tensor:
    """``(B, M)`` bool: width and height both above ``min_size`` (mmdet's ``min_bbox_size``)."""
    return (bboxes[..., 2] - bboxes[..., 0] > min_size) \
        & (bboxes[..., 3] - bboxes[..., 1] > min_size)


class Candidates(NamedTuple):
    """The candidates of a batch before NMS (:func:`select_candidates`).

    Attributes:
        bboxes (Tensor): ``(B, M, 4)`` x1y1x2y2, clipped to each image.
        scores (Tensor): ``(B, M)`` sigmoid scores.
        labels (Tensor): ``(B, M)`` long classes in ``[0, K)``.
        valid (Tensor): ``(B, M)`` bool, above ``score_thr`` and ``min_bbox_size``.
    """

    bboxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor


def select_candidates(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
                      anchors: Tensor, num_classes: int, bbox_coder: object,
                      settings: PostProcessSettings, k: int, img_hw: Tensor,
                      scale_factors: Union[Tensor, Sequence[Sequence[float]], None] = None,
                      topk: Optional[TopK] = None) -> Candidates:
    """Steps 1 to 4 of the module docstring: per-level top-k, gather, decode, clip, rescale and
    the ``score_thr`` / ``min_bbox_size`` mask, for the whole batch.

    Args:
        cls_scores (Sequence[Tensor]): ``[(B, Ab*K, Hi, Wi)]`` logits.
        bbox_preds (Sequence[Tensor]): ``[(B, Ab*D, Hi, Wi)]`` deltas.
        anchors (Tensor): ``(sum(Hi*Wi*Ab), 4)`` anchors of all levels (level, row, column,
            base anchor).
        num_classes (int): ``K``.
        bbox_coder (object): decodes the deltas; its ``clip_border`` (default True) clips.
        settings (PostProcessSettings): ``score_thr`` and ``min_bbox_size``.
        k (int): pairs kept per level and image (:func:`topk_size`).
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)`` (``img_shape``), any dtype.
        scale_factors (Tensor | Sequence[Sequence[float]], optional): per image
            ``(w_scale, h_scale)``, ``(B, 2)``: map the boxes back to the original images
            before the size mask (mmdet's ``rescale``); None keeps input pixels.
        topk (TopK, optional): a row-wise top-k for :func:`select_pairs`.

    Returns:
        Candidates: ``M`` candidates per image, as :func:`select_pairs` gives them.
    """
    values, pairs = select_pairs(cls_scores, k, topk)
    args = (values, pairs, bbox_preds, anchors, num_classes,
            cls_scores[0].size(1) // num_classes, bbox_coder, settings, img_hw, scale_factors)
    if topk is None and _fused(values, bbox_preds, anchors, bbox_coder):
        return fast_or_plain(lambda: _decode_fused(*args), lambda: _decode(*args),
                             _FUSED.off, "RetinaNetHead: the candidates' Triton kernel",
                             'decoding them in ATen ops')
    return _decode(*args)


def _decode(values: Tensor, pairs: Tensor, bbox_preds: Sequence[Tensor], anchors: Tensor,
            num_classes: int, num_base: int, bbox_coder: object, settings: PostProcessSettings,
            img_hw: Tensor, scale_factors: Union[Tensor, Sequence[Sequence[float]], None]
            ) -> Candidates:
    """Steps 2 to 4 in ATen ops, from the pairs of step 1 (``values`` and ``pairs`` ``(B, M)``;
    ``num_base`` base anchors per pixel; the other arguments as :func:`select_candidates`)."""
    scores, labels = values.sigmoid(), pairs % num_classes  # (B, M)
    valid = scores > settings.score_thr  # mmdet's exact test, on the selected pairs
    if settings.score_thr < 0:  # the padding (score 0) is no pair
        valid = valid & (values > float('-inf'))
    anchor_ids = pairs // num_classes
    deltas = gather_deltas(bbox_preds, anchor_ids, num_base)
    bboxes = decode_boxes(bbox_coder, anchors[anchor_ids], deltas)
    if getattr(bbox_coder, 'clip_border', True):
        bboxes = clip_boxes(bboxes, img_hw.to(bboxes.dtype))
    if scale_factors is not None:
        bboxes = rescale_boxes(bboxes, _on_device(scale_factors, bboxes))
    if settings.min_bbox_size >= 0:
        valid = valid & min_size_mask(bboxes, settings.min_bbox_size)
    return Candidates(bboxes, scores, labels, valid)


# on until the fused kernel fails once (then steps 2 to 4 run in ATen ops, warned once)
_FUSED = Switch()


def _fused(values: Tensor, bbox_preds: Sequence[Tensor], anchors: Tensor,
           bbox_coder: object) -> bool:
    """Whether steps 2 to 4 run as one Triton kernel (``retina_candidates_triton.py``):
    where Triton kernels run, in fp32, for mmdet's ``DeltaXYWHBBoxCoder`` itself, outside
    traced, exported and compiled graphs (which keep the ATen ops)."""
    return (_FUSED.on and on_triton_device(values)
            and values.dtype == bbox_preds[0].dtype == anchors.dtype == torch.float32
            # the kernel reads raw pointers: tensors elsewhere are the ATen ops' error to raise
            and values.device == bbox_preds[0].device == anchors.device
            and plain_delta_coder(bbox_coder)
            and not (torch.jit.is_tracing() or is_compiling()
                     or torch.onnx.is_in_onnx_export()))


def _decode_fused(values: Tensor, pairs: Tensor, bbox_preds: Sequence[Tensor],
                  anchors: Tensor, num_classes: int, num_base: int, bbox_coder: object,
                  settings: PostProcessSettings, img_hw: Tensor,
                  scale_factors: Union[Tensor, Sequence[Sequence[float]], None]) -> Candidates:
    """:func:`_decode` as one launch (arguments as there; ``bbox_coder`` is mmdet's
    ``DeltaXYWHBBoxCoder``)."""
    from .retina_candidates_triton import decode_candidates_triton
    deltas, strides = concat_deltas(bbox_preds, num_base)
    clip = getattr(bbox_coder, 'clip_border', True)
    return Candidates(*decode_candidates_triton(
        values, pairs, deltas, strides, anchors.contiguous(),
        coder_constants(bbox_coder, torch.float32, values.device), num_classes, num_base,
        float(bbox_coder.ctr_clamp) if bbox_coder.add_ctr_clamp else None, MAX_RATIO,
        img_hw.to(values.device, torch.float32).contiguous() if clip else None,
        None if scale_factors is None else _on_device(scale_factors, values).contiguous(),
        settings.score_thr, settings.min_bbox_size))


def _on_device(scale_factors: Union[Tensor, Sequence[Sequence[float]]], like: Tensor) -> Tensor:
    """``(B, 2)`` scale factors in ``like``'s dtype, on its device."""
    if not isinstance(scale_factors, Tensor):  # new_tensor would wait on CUDA
        return host_tensor(scale_factors, like.dtype, like.device)
    return scale_factors.to(like.device, like.dtype)


def detections_by_image(bboxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor,
                        nms_cfg: Optional[Dict] = None,
                        max_per_img: Optional[int] = None) -> InstanceList:
    """Class-wise NMS and ``max_per_img`` of each image's valid candidates, split by image.

    Args:
        bboxes (Tensor): ``(B, M, 4)`` x1y1x2y2.
        scores (Tensor): ``(B, M)``.
        labels (Tensor): ``(B, M)`` long classes in ``[0, K)``.
        valid (Tensor): ``(B, M)`` bool, candidates that passed the filters.
        nms_cfg (Dict, optional): mmcv ``batched_nms`` config; None returns the valid
            candidates in their order, without NMS or ``max_per_img`` (mmdet's
            ``with_nms=False``; one host read).
        max_per_img (int, optional): detections kept per image after NMS (None: all).

    Returns:
        InstanceList: per image ``bboxes`` ``(N, 4)``, ``scores`` ``(N,)`` (descending after
        NMS), ``labels`` ``(N,)``.
    """
    if nms_cfg is not None and not batched_nms_supports(nms_cfg):
        return _mmcv_nms_by_image(bboxes, scores, labels, valid, nms_cfg, max_per_img)
    if nms_cfg is None:
        counts = valid.sum(1).tolist()  # the host read
        # the valid candidates first, image after image, each in its order
        keep = (~valid).flatten().to(torch.uint8).argsort(stable=True)[:sum(counts)]
    else:
        keep, counts = batched_nms_padded(bboxes, scores, labels, valid, nms_cfg, max_per_img)
    found = InstanceData(bboxes=bboxes.flatten(0, 1)[keep], scores=scores.flatten()[keep],
                         labels=labels.flatten()[keep])
    return [found[end - n:end] for n, end in zip(counts, accumulate(counts))]


def _mmcv_nms_by_image(bboxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor,
                       nms_cfg: Dict, max_per_img: Optional[int]) -> InstanceList:
    """mmcv's ``batched_nms`` image by image (the NMS variants ``batched_nms_padded`` does not
    implement, e.g. ``soft_nms``, which may rescore); arguments as :func:`detections_by_image`.
    """
    results = []
    for img_boxes, img_scores, img_labels, img_valid in zip(bboxes, scores, labels, valid):
        res = InstanceData(bboxes=img_boxes[img_valid], scores=img_scores[img_valid],
                           labels=img_labels[img_valid])
        if res.bboxes.numel() > 0:
            dets, nms_keep = batched_nms(res.bboxes, res.scores, res.labels, nms_cfg)
            res = res[nms_keep]
            res.scores = dets[:, -1]
            res = res[:max_per_img]
        results.append(res)
    return results
