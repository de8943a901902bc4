"""RetinaNetHead's inference half: the post-processing steps of
:mod:`.retina_post_processing` for the whole batch, with shapes fixed up to one class-wise NMS.
Detections equal mmdet's ``BaseDenseHead.predict_by_feat``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from mmengine.config import ConfigDict
from torch import Tensor

from ...utils.errors import RetinaConfigError
from .retina_gts import host_tensor, image_hw
from .retina_head_checks import check_feature_levels, check_levels
from .retina_head_compile import dense_candidates
from .retina_pair_selection import topk_size
from .retina_post_processing import detections_by_image, select_candidates
from .retina_post_settings import PostProcessSettings


class RetinaHeadPredictMixin:
    """``predict_by_feat`` of :class:`~.retina_net_head.RetinaNetHead`, which sets the
    attributes read here (``test_cfg``, ``anchor_cache``, ``prior_generator``, ``bbox_coder``,
    ``cls_out_channels``, ``dense_compiler``)."""

    def predict_by_feat(self,
                        cls_scores: List[Tensor],
                        bbox_preds: List[Tensor],
                        score_factors: Optional[List[Tensor]] = None,
                        batch_img_metas: Optional[List[dict]] = None,
                        cfg: Optional[ConfigDict] = None,
                        rescale: bool = False,
                        with_nms: bool = True) -> InstanceList:
        """Detections of a batch, equal to mmdet's ``BaseDenseHead.predict_by_feat``: the steps
        of :mod:`.retina_post_processing` for the whole batch, with shapes fixed up to the NMS.
        The host waits for the device twice per batch with mmcv's plain ``nms`` (once without
        NMS; once more with ``nms_pre <= 0``; image by image for other NMS types).

        Args:
            cls_scores (List[Tensor]): ``[(B, A*K, Hi, Wi)]`` logits.
            bbox_preds (List[Tensor]): ``[(B, A*4, Hi, Wi)]`` deltas.
            score_factors (List[Tensor], optional): must be None (no centerness-like factor).
            batch_img_metas (List[dict], optional): per image ``img_shape`` and, with
                ``rescale``, ``scale_factor`` ``(w_scale, h_scale)``.
            cfg (ConfigDict, optional): test config; None -> ``self.test_cfg``.
            rescale (bool): map boxes back to the original image size.
            with_nms (bool): False skips NMS and ``max_per_img`` (test-time augmentation).

        Returns:
            InstanceList: per image ``bboxes`` ``(N, 4)`` (x1, y1, x2, y2), ``scores`` ``(N,)``
            sorted descending when NMS ran, ``labels`` ``(N,)`` in ``[0, K)``.
        """
        if score_factors is not None:
            raise RetinaConfigError('score_factors must be None for RetinaNetHead')
        featmap_sizes = check_levels(cls_scores, bbox_preds, self.prior_generator.num_levels)
        settings = PostProcessSettings.from_cfg(self.test_cfg if cfg is None else cfg)
        nms_cfg = settings.nms_cfg() if with_nms else None
        anchors, _ = self.anchor_cache.anchors(featmap_sizes, cls_scores[0].device,
                                               cls_scores[0].dtype)
        candidates = select_candidates(
            cls_scores, bbox_preds, anchors, self.cls_out_channels, self.bbox_coder, settings,
            topk_size(cls_scores, settings),
            image_hw(batch_img_metas, bbox_preds[0]),
            [m['scale_factor'] for m in batch_img_metas] if rescale else None)
        return detections_by_image(*candidates, nms_cfg, settings.max_per_img)

    def predict(self, x: Tuple[Tensor, ...], batch_data_samples: SampleList,
                rescale: bool = False) -> InstanceList:
        """mmdet's ``BaseDenseHead.predict`` (forward, then :meth:`predict_by_feat`); with
        ``compile_cfg`` and ``nms_pre > 0``, the forward and the steps up to the NMS run as one
        compiled region (:mod:`.retina_head_compile`).

        Args:
            x (Tuple[Tensor, ...]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
            batch_data_samples (SampleList): per image ``metainfo`` (``img_shape``; with
                ``rescale``, ``scale_factor``).
            rescale (bool): map boxes back to the original image size.

        Returns:
            InstanceList: as :meth:`predict_by_feat`.
        """
        if self.dense_compiler is None:
            return super().predict(x, batch_data_samples, rescale)
        settings = PostProcessSettings.from_cfg(self.test_cfg)
        if settings.nms_pre <= 0:
            return super().predict(x, batch_data_samples, rescale)
        metas = [sample.metainfo for sample in batch_data_samples]
        featmap_sizes = check_feature_levels(x, self.prior_generator.num_levels)
        anchors, _ = self.anchor_cache.anchors(featmap_sizes, x[0].device, x[0].dtype)
        img_hw = image_hw(metas, x[0])
        # an input of the region, not a constant traced into it: it changes with the images
        scale_factors = host_tensor([m['scale_factor'] for m in metas], x[0].dtype,
                                    x[0].device) if rescale else None
        candidates = self.dense_compiler(dense_candidates, self, tuple(x), anchors,
                                         settings, img_hw, scale_factors)
        return detections_by_image(*candidates, settings.nms_cfg(), settings.max_per_img)
