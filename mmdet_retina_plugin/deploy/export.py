"""ONNX export of a detector whose head is :class:`RetinaNetHead`: image batch to detections.

The graph holds the data preprocessor's channel flip and normalisation, the backbone, neck and
head, and (unless ``postprocess=False``) the head's ``test_cfg`` post-processing: anchors for the
input's size, then the head's own candidate selection (per-level top-k of ``nms_pre``, sigmoid,
box decoding, clipping to each image, ``score_thr`` / ``min_bbox_size``:
``retina_post_processing.select_candidates``), class-wise NMS (ONNX ``NonMaxSuppression``) and
``max_per_img``. The test pipeline's resize and pad, the class names and the output conventions
are stored in the file's metadata (:data:`~.metadata.METADATA_KEY`), so the file alone is enough
to run it (:class:`~mmdet_retina_plugin.deploy.OnnxRetinaNet`).

Uses ``torch.onnx.export``'s TorchScript exporter by default (``dynamo=True``: its dynamo
exporter, the same graph); NMS is a torch custom op translated to ONNX's ``NonMaxSuppression``
(:mod:`.graph_ops`).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..models.dense_heads import RetinaNetHead
from ..models.dense_heads.retina_post_processing import select_candidates
from ..models.dense_heads.retina_post_settings import PostProcessSettings
from ..models.layers.batched_nms import SUPPORTED_KEYS, class_offset_boxes
from ..models.layers.frozen_bn_folding import fold_frozen_bn
from ..utils.errors import RetinaConfigError
from . import graph_ops
from .metadata import write_metadata
from .pipeline import pipeline_meta
from .winograd import winograd_convs

# Side of the example input of a dynamic export when the test pipeline fixes no size: any
# multiple of the pad divisor traces the same graph; this one is near mmdet's test sizes.
_DYNAMIC_EXAMPLE_SIDE = 640


def graph_settings(test_cfg: Optional[Dict[str, Any]]) -> PostProcessSettings:
    """The head's post-processing settings (:class:`PostProcessSettings`, as the head reads
    them), or RetinaConfigError naming what the graph cannot express.

    Args:
        test_cfg (dict | None): the head's ``test_cfg``.

    Returns:
        PostProcessSettings: with an ``nms`` config of mmcv's plain ``nms`` without pixel
        offset, ``score_thr >= 0``, ``min_bbox_size <= 0`` and ``max_per_img > 0``.
    """
    if not test_cfg:
        raise RetinaConfigError('model test_cfg is missing: the graph needs nms, max_per_img')
    if test_cfg.get('with_nms', True) is False:
        raise RetinaConfigError('test_cfg with_nms=False cannot be exported: the graph always '
                                'runs NMS (export with postprocess=False / --no-postprocess for '
                                'raw outputs)')
    settings = PostProcessSettings.from_cfg(test_cfg)
    if settings.nms is None:
        raise RetinaConfigError('test_cfg.nms is missing: the graph always runs NMS')
    nms_type = settings.nms.get('type', 'nms')
    if nms_type != 'nms':
        raise RetinaConfigError(f'test_cfg.nms.type={nms_type!r} cannot be exported: ONNX '
                                f'NonMaxSuppression is plain greedy NMS (type="nms")')
    extra = set(settings.nms) - SUPPORTED_KEYS
    if extra:
        raise RetinaConfigError(f'test_cfg.nms options {sorted(extra)} cannot be exported')
    if settings.nms.get('offset', 0) != 0:
        raise RetinaConfigError(f"test_cfg.nms.offset={settings.nms['offset']} cannot be "
                                'exported: ONNX NonMaxSuppression has no pixel offset (0 can)')
    if settings.score_thr < 0:
        raise RetinaConfigError(f'test_cfg.score_thr must be >= 0 to be exported, got '
                                f'{settings.score_thr}')
    if settings.min_bbox_size > 0:
        raise RetinaConfigError(f'test_cfg.min_bbox_size={settings.min_bbox_size:g} cannot be '
                                'exported: mmdet applies it in original-image pixels, which the '
                                'graph does not know (0 or -1 can)')
    if settings.max_per_img is None or settings.max_per_img <= 0:
        raise RetinaConfigError(f'test_cfg.max_per_img must be > 0 to be exported, got '
                                f'{settings.max_per_img}')
    return settings


class RetinaNetGraph(nn.Module):
    """The exported computation: preprocessing, network and post-processing.

    Args:
        detector (nn.Module): an mmdet single-stage detector (``extract_feat``, ``bbox_head``)
            whose ``bbox_head`` is a :class:`RetinaNetHead`, in eval mode.
        mean (Sequence[float]): per-channel mean, in the network's channel order.
        std (Sequence[float]): per-channel std, in the network's channel order.
        bgr_to_rgb (bool): flip the input's BGR channels to RGB before normalising.
        postprocess (bool): detections (True) or raw per-level outputs and anchors (False).
    """

    def __init__(self, detector: nn.Module, mean: Sequence[float], std: Sequence[float],
                 bgr_to_rgb: bool, postprocess: bool = True) -> None:
        super().__init__()
        head = getattr(detector, 'bbox_head', None)
        if not isinstance(head, RetinaNetHead):
            raise RetinaConfigError(f'model.bbox_head must be RetinaNetHead (mmdet_retina_plugin) '
                                    f'to be exported, got {type(head).__name__}')
        self.detector = detector
        self.bgr_to_rgb = bgr_to_rgb
        self.postprocess = postprocess
        self.settings = graph_settings(head.test_cfg) if postprocess else None
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        # the exporters restore the module's own mode afterwards: make it eval, for the detector
        self.eval()

    @property
    def head(self) -> RetinaNetHead:
        """The detector's head (not registered a second time as a submodule of this graph)."""
        return self.detector.bbox_head

    def raw_outputs(self, images: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """Normalises ``images`` and runs the network.

        Args:
            images (Tensor): ``(B, 3, H, W)`` float BGR pixels, resized and padded.

        Returns:
            tuple: per level ``cls_scores`` ``(B, A*K, Hi, Wi)``, ``bbox_preds``
            ``(B, A*4, Hi, Wi)`` and anchors ``(Hi*Wi*A, 4)``.
        """
        if self.bgr_to_rgb:
            images = images[:, [2, 1, 0]]
        # as mmengine's preprocessor: subtract, then divide
        feats = self.detector.extract_feat((images - self.mean) / self.std)
        cls_scores, bbox_preds = self.head(feats)
        anchors = [self.head.prior_generator.single_level_grid_priors(
            score.shape[-2:], level, dtype=score.dtype, device=score.device)
            for level, score in enumerate(cls_scores)]
        return cls_scores, bbox_preds, anchors

    def forward(self, images: Tensor, img_shapes: Tensor) -> Tuple[Tensor, ...]:
        """Detections of a batch.

        Args:
            images (Tensor): ``(B, 3, H, W)`` float BGR pixels after resize and pad.
            img_shapes (Tensor): ``(B, 2)`` int64 ``(h, w)`` of each resized image before
                padding; boxes are clipped to it, as mmdet clips to ``img_shape``.

        Returns:
            tuple: with post-processing, ``dets`` ``(B, max_per_img, 5)`` ``[x1, y1, x2, y2,
            score]`` in input pixels, by descending score, and ``labels``
            ``(B, max_per_img)`` int64; unused slots hold zeros and label -1. Without it, the
            per-level ``cls_scores``, then the per-level ``bbox_preds``, then all anchors
            ``(sum(Hi*Wi*A), 4)``.
        """
        cls_scores, bbox_preds, anchors = self.raw_outputs(images)
        if not self.postprocess:
            return (*cls_scores, *bbox_preds, torch.cat(anchors))
        return self._detections(cls_scores, bbox_preds, anchors, img_shapes)

    def _detections(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                    anchors: List[Tensor], img_shapes: Tensor) -> Tuple[Tensor, Tensor]:
        """The head's candidates (:func:`select_candidates`, with a top-k of fixed width), then
        ONNX's NMS and the padded outputs; arguments and outputs as :meth:`forward`."""
        settings, head = self.settings, self.head
        cand = select_candidates(
            cls_scores, bbox_preds, torch.cat(anchors), head.cls_out_channels, head.bbox_coder,
            settings, settings.nms_pre, img_shapes, topk=graph_ops.level_topk)
        nms_boxes = cand.bboxes if settings.nms.get('class_agnostic', False) else \
            class_offset_boxes(cand.bboxes, cand.labels, cand.valid)
        nms_scores = torch.where(cand.valid, cand.scores,
                                 cand.scores.new_tensor(graph_ops.REJECTED_SCORE))
        selected = graph_ops.onnx_nms(nms_boxes, nms_scores[:, None], settings.max_per_img,
                                      float(settings.nms['iou_threshold']))
        return graph_ops.pack_detections(selected, cand.bboxes, cand.scores, cand.labels,
                                         settings.max_per_img)


def _load_detector(config: Union[str, Path, Any], checkpoint: Union[str, Path]
                   ) -> Tuple[nn.Module, Any]:
    from mmdet.apis import init_detector
    from mmengine.config import Config

    import mmdet_retina_plugin  # noqa: F401  (registers our modules for the config)

    if not Path(checkpoint).is_file():
        raise RetinaConfigError(f'checkpoint not found: {checkpoint}')
    cfg = Config.fromfile(str(config)) if isinstance(config, (str, Path)) \
        else copy.deepcopy(config)
    model = init_detector(cfg, str(checkpoint), device='cpu')
    return model.eval(), cfg


def _input_hw(meta: Dict[str, Any], input_size: Optional[Sequence[int]],
              dynamic: bool) -> Tuple[int, int]:
    """The example (and, without ``dynamic``, the fixed) input size: ``input_size``, or the
    test resize's scale ``(h, w)`` padded to the divisor, or (``dynamic`` only, where any size
    traces the same graph) a square of about :data:`_DYNAMIC_EXAMPLE_SIDE` pixels."""
    divisor = meta['pad_size_divisor']
    if input_size is not None:
        height, width = (int(v) for v in input_size)
        if height < 1 or width < 1 or height % divisor or width % divisor:
            raise RetinaConfigError(f'input_size must be positive multiples of the pad divisor '
                                    f'{divisor}, got {height} x {width}')
        return height, width
    resize = meta['resize']
    if resize is None or not resize['scale']:
        if dynamic:
            side = -(-_DYNAMIC_EXAMPLE_SIDE // divisor) * divisor
            return side, side
        raise RetinaConfigError(
            'input_size is required: the test pipeline fixes no image size; give the graph\'s '
            'fixed size with --input-size H W (export_onnx(..., input_size=(H, W))), in '
            f'multiples of the pad divisor {divisor}, or export with --dynamic')
    width, height = resize['scale']
    if resize['keep_ratio']:  # mmcv's keep_ratio scale is (long edge, short edge)
        width, height = max(width, height), min(width, height)
    return tuple(-(-v // divisor) * divisor for v in (height, width))


def export_onnx(config: Union[str, Path, Any], checkpoint: Union[str, Path],
                out: Union[str, Path], opset: int = 17, postprocess: bool = True,
                input_size: Optional[Sequence[int]] = None, dynamic: bool = False,
                batch_size: int = 1, dynamo: bool = False,
                winograd: Optional[bool] = None) -> Path:
    """Exports the detector of ``config`` with the weights of ``checkpoint`` to ``out``.

    Args:
        config (str | Path | mmengine.Config): detector config.
        checkpoint (str | Path): its weights (mmengine checkpoint).
        out (str | Path): the ``.onnx`` file to write (weights inside it).
        opset (int): ONNX opset (>= 11; >= 18 with ``dynamo``).
        postprocess (bool): False exports the raw per-level outputs and the anchors.
        input_size (Sequence[int] | None): ``(H, W)`` of the example input and, without
            ``dynamic``, the graph's fixed input size; multiples of the pad divisor. None: the
            test resize's scale, padded; with ``dynamic`` and no fixed test scale, a square of
            about :data:`_DYNAMIC_EXAMPLE_SIDE` pixels.
        dynamic (bool): batch size, height and width free (height and width multiples of the
            pad divisor).
        batch_size (int): the fixed batch size without ``dynamic``.
        dynamo (bool): ``torch.onnx.export``'s dynamo exporter (``torch.export`` +
            onnxscript) instead of the TorchScript one; the same graph, slower to export
            (docs/deploy.md).
        winograd (bool | None): compute the network's 3x3 stride-1 convolutions of >= 192
            input and output channels with Winograd F(4x4, 3x3) (:mod:`.winograd`): a quarter
            of their arithmetic, results within float32 rounding (~1e-5 relative) of the
            direct ones. None: with the TorchScript exporter, not with ``dynamo`` (its
            symbolic shapes make Winograd calls very slow to export, docs/deploy.md).

    Returns:
        Path: ``out``.

    Raises:
        RetinaConfigError: a missing checkpoint, a head that is not :class:`RetinaNetHead`, a
            test-time option the graph cannot express, or no ``input_size`` where one is
            needed (named in the message).
    """
    if opset < (18 if dynamo else 11):
        raise RetinaConfigError(f'opset must be >= {18 if dynamo else 11} with dynamo={dynamo}, '
                                f'got {opset}')
    if batch_size < 1:
        raise RetinaConfigError(f'batch_size must be >= 1, got {batch_size}')
    model, cfg = _load_detector(config, checkpoint)
    # frozen norms as part of their convolutions: fewer graph nodes, one rounding fewer; before
    # the Winograd rewrite, which replaces some of those convolutions
    folded = fold_frozen_bn(model)
    meta = pipeline_meta(cfg, model.dataset_meta.get('classes', ()))
    graph = RetinaNetGraph(model, meta['mean'], meta['std'], meta['bgr_to_rgb'], postprocess)
    # after RetinaNetGraph has checked the head
    if winograd is None:
        winograd = not dynamo
    replaced = list(winograd_convs(model)) if winograd else []
    height, width = _input_hw(meta, input_size, dynamic)
    batch = 2 if dynamic else batch_size  # a batch of 2 keeps the exporter from fixing B = 1
    args = (torch.zeros(batch, 3, height, width), torch.tensor([[height, width]] * batch))
    num_levels = graph.head.prior_generator.num_levels
    output_names = ['dets', 'labels'] if postprocess else \
        [*(f'cls_score_{i}' for i in range(num_levels)),
         *(f'bbox_pred_{i}' for i in range(num_levels)), 'anchors']
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if dynamo:
            _export_dynamo(graph, args, output_names, out, opset, dynamic,
                           meta['pad_size_divisor'])
        else:
            _export_torchscript(graph, args, output_names, out, opset, dynamic)
    meta.update(postprocess=postprocess, dynamic=dynamic,
                input_size=None if dynamic else [height, width],
                batch_size=None if dynamic else batch_size,
                outputs=output_names, padding=dict(score=0.0, label=-1),
                test_cfg=dataclasses.asdict(graph.settings) if postprocess else None,
                num_classes=graph.head.num_classes, winograd_convs=replaced,
                frozen_norms_folded=folded)
    write_metadata(out, meta)
    return out


def _export_torchscript(graph: RetinaNetGraph, args: Tuple[Tensor, Tensor],
                        output_names: List[str], out: Path, opset: int, dynamic: bool) -> None:
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {'images': {0: 'batch', 2: 'height', 3: 'width'},
                        'img_shapes': {0: 'batch'}, **{name: {0: 'batch'} for name in
                                                       output_names if name != 'anchors'}}
        for i, name in enumerate(output_names):
            if name.startswith(('cls_score', 'bbox_pred')):
                dynamic_axes[name] = {0: 'batch', 2: f'height_{i}', 3: f'width_{i}'}
        if 'anchors' in output_names:
            dynamic_axes['anchors'] = {0: 'num_anchors'}
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice, and tracer notes on shape asserts in mmdet
        warnings.simplefilter('ignore')
        torch.onnx.export(graph, args, str(out), input_names=['images', 'img_shapes'],
                          output_names=output_names, opset_version=opset, dynamo=False,
                          dynamic_axes=dynamic_axes)


def _export_dynamo(graph: RetinaNetGraph, args: Tuple[Tensor, Tensor], output_names: List[str],
                   out: Path, opset: int, dynamic: bool, divisor: int) -> None:
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim('batch', min=1, max=1024)
        height = divisor * torch.export.Dim('height', min=1, max=8192 // divisor)
        width = divisor * torch.export.Dim('width', min=1, max=8192 // divisor)
        dynamic_shapes = ({0: batch, 2: height, 3: width}, {0: batch})
    program = torch.onnx.export(
        graph, args, input_names=['images', 'img_shapes'], output_names=output_names,
        opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes,
        custom_translation_table={torch.ops.mmdet_retina_plugin.onnx_nms.default:
                                  graph_ops.onnx_nms_translation})
    program.save(str(out), external_data=False)
