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

Compiling never breaks a run: where a compiled call raises and the eager call does not, the
head warns once and stays eager (an error of the eager code itself is raised as it is).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

from ...utils.compiling import is_compiling
from ...utils.errors import RetinaConfigError
from .retina_gts import GtBatch
from .retina_post_processing import Candidates, select_candidates
from .retina_post_settings import PostProcessSettings

#: ``torch.compile`` keywords ``compile_cfg`` may set (``fullgraph`` defaults to True and
#: ``dynamic`` to False here: one graph per shape, as CUDA graphs need)
COMPILE_KEYS = ('backend', 'mode', 'options', 'dynamic', 'fullgraph')
_MODES = (None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')

Out = TypeVar('Out')


def check_compile_cfg(compile_cfg: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """``compile_cfg`` as ``torch.compile`` keywords, or None (eager).

    Raises:
        RetinaConfigError: not a mapping, a key outside :data:`COMPILE_KEYS`, or an unknown
            ``mode``.
    """
    if compile_cfg is None:
        return None
    if not isinstance(compile_cfg, Mapping):
        raise RetinaConfigError(f'compile_cfg must be None or a dict of torch.compile keywords '
                                f'{COMPILE_KEYS}, got {compile_cfg!r}')
    unknown = sorted(set(compile_cfg) - set(COMPILE_KEYS))
    if unknown:
        raise RetinaConfigError(f'compile_cfg keys must be among {COMPILE_KEYS}, got {unknown}')
    if compile_cfg.get('mode') not in _MODES:
        raise RetinaConfigError(f"compile_cfg.mode must be one of {_MODES}, got "
                                f"{compile_cfg['mode']!r}")
    return dict(dict(fullgraph=True, dynamic=False), **compile_cfg)


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
                     level_anchors: Sequence[Tensor], settings: PostProcessSettings,
                     img_hw: Tensor, scale_factors: Optional[Tensor]) -> Candidates:
    """Inference's region: the head's forward and :func:`select_candidates` with ``nms_pre``
    pairs per level.

    Args:
        head (RetinaNetHead): the head.
        feats (Tuple[Tensor, ...]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
        level_anchors (Sequence[Tensor]): ``[(Hi*Wi*A, 4)]`` anchors of each level.
        settings (PostProcessSettings): the test settings, ``nms_pre > 0``.
        img_hw (Tensor): ``(B, 2)`` image ``(h, w)``.
        scale_factors (Tensor, optional): ``(B, 2)`` ``(w_scale, h_scale)`` to map boxes back
            to the original images; None keeps input pixels.

    Returns:
        Candidates: ``(B, M, ...)`` candidates before NMS, ``M = sum(min(nms_pre, Hi*Wi*A*K))``.
    """
    cls_scores, bbox_preds = head(feats)
    return select_candidates(cls_scores, bbox_preds, level_anchors, head.cls_out_channels,
                             head.bbox_coder, settings, [settings.nms_pre] * len(cls_scores),
                             img_hw, scale_factors)


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable[..., Out], cfg: Tuple[Tuple[str, Any], ...]) -> Callable[..., Out]:
    # One compiled function per region and config, shared by every head (the head is an
    # argument, guarded by dynamo): deep copies of a head (EMA models) need nothing of their own.
    kwargs = dict(cfg)
    if kwargs.get('options') is not None:
        kwargs['options'] = dict(kwargs['options'])
    return torch.compile(fn, **kwargs)


class DenseCompiler:
    """Runs a dense region compiled with ``compile_cfg``, eager where that fails.

    Args:
        compile_cfg (Dict[str, Any]): ``torch.compile`` keywords (:func:`check_compile_cfg`).
    """

    def __init__(self, compile_cfg: Dict[str, Any]) -> None:
        self.cfg = tuple(sorted((k, _hashable(v)) for k, v in compile_cfg.items()))
        self.failed = False

    def __call__(self, fn: Callable[..., Out], *args: Any) -> Out:
        """``fn(*args)`` compiled (eager inside another compiled or traced region, and after
        a failure)."""
        if self.failed or is_compiling() or torch.jit.is_tracing():
            return fn(*args)
        try:
            return _compiled(fn, self.cfg)(*args)
        except Exception as err:  # noqa: BLE001  (compiling must never break a run)
            out = fn(*args)  # an error of the code itself is raised here, unblamed
            self.failed = True
            reason = (str(err).strip().splitlines() or [''])[0]
            warnings.warn(f'RetinaNetHead: compiling {fn.__name__} failed ({type(err).__name__}: '
                          f'{reason}); running it eager from now on.')
            return out


def _hashable(value: Any) -> Any:
    """``compile_cfg`` values as a hashable key (``options`` is a dict)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
