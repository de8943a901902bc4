"""The post-processing settings of a RetinaNet head's ``test_cfg``, parsed and checked once.

:meth:`~.RetinaNetHead.predict_by_feat` and the ONNX exporter (``deploy/export.py``) both read
them from :class:`PostProcessSettings`, so the two agree on defaults and on what a value means;
the exporter adds only what its graph cannot express.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from ...utils.errors import RetinaConfigError


def _number(test_cfg: Mapping, key: str, default: float) -> float:
    value = test_cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RetinaConfigError(f'test_cfg.{key} must be a number, got {value!r}')
    return float(value)


def _integer(test_cfg: Mapping, key: str, default: Optional[int]) -> Optional[int]:
    value = test_cfg.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RetinaConfigError(f'test_cfg.{key} must be an int, got {value!r}')
    return int(value)


def _nms(test_cfg: Mapping) -> Optional[Dict[str, Any]]:
    nms = test_cfg.get('nms')
    if nms is None:
        return None
    if not isinstance(nms, Mapping):
        raise RetinaConfigError(f'test_cfg.nms must be an mmcv batched_nms config (a dict), got '
                                f'{nms!r}')
    nms = dict(nms)
    if nms.get('type', 'nms') == 'nms':
        thr = nms.get('iou_threshold')
        if isinstance(thr, bool) or not isinstance(thr, numbers.Real) or not 0 <= thr <= 1:
            raise RetinaConfigError(f'test_cfg.nms.iou_threshold must be a number in [0, 1], got '
                                    f'{thr!r}')
    return nms


@dataclass(frozen=True)
class PostProcessSettings:
    """What mmdet's ``BaseDenseHead.predict_by_feat`` reads from ``test_cfg``, with its defaults.

    Attributes:
        score_thr (float): candidates need a sigmoid score above it (default 0).
        nms_pre (int): (anchor, class) pairs kept per level and image before NMS; <= 0 (default
            -1): every pair above ``score_thr``.
        min_bbox_size (float): boxes need width and height above it, after rescaling; < 0
            (default -1): no size filter.
        nms (dict, optional): mmcv ``batched_nms`` config (``type`` 'nms' by default, with
            ``iou_threshold`` in [0, 1]); None: none given, so only ``with_nms=False`` runs.
        max_per_img (int, optional): detections kept per image after NMS; None or <= 0: all.
    """

    score_thr: float = 0.0
    nms_pre: int = -1
    min_bbox_size: float = -1.0
    nms: Optional[Dict[str, Any]] = None
    max_per_img: Optional[int] = None

    @classmethod
    def from_cfg(cls, test_cfg: Optional[Mapping]) -> PostProcessSettings:
        """Parses a head's ``test_cfg``.

        Args:
            test_cfg (Mapping, optional): the head's ``test_cfg`` (other keys are left to
                their readers); None: every default.

        Raises:
            RetinaConfigError: a field of the wrong type, or an NMS IoU threshold outside
                [0, 1]; the message names the field.
        """
        test_cfg = {} if test_cfg is None else test_cfg
        if not isinstance(test_cfg, Mapping):
            raise RetinaConfigError(f'test_cfg must be a dict or None, got {test_cfg!r}')
        return cls(score_thr=_number(test_cfg, 'score_thr', 0.0),
                   nms_pre=_integer(test_cfg, 'nms_pre', -1),
                   min_bbox_size=_number(test_cfg, 'min_bbox_size', -1.0),
                   nms=_nms(test_cfg), max_per_img=_integer(test_cfg, 'max_per_img', None))

    def nms_cfg(self) -> Dict[str, Any]:
        """``nms``, which NMS needs.

        Raises:
            RetinaConfigError: ``test_cfg.nms`` is missing.
        """
        if self.nms is None:
            raise RetinaConfigError("test_cfg.nms is required to run NMS (with_nms=True), e.g. "
                                    "dict(type='nms', iou_threshold=0.5)")
        return self.nms
