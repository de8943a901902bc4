"""ONNX export of a detector whose head is :class:`RetinaNetHead`: image batch to detections.

The graph holds the data preprocessor's channel flip and normalisation, the backbone, neck and
head, and (unless ``postprocess=False``) the head's ``test_cfg`` post-processing: anchors for the
input's size, sigmoid, per-level top-k (``nms_pre``), box decoding, clipping to each image,
``score_thr`` / ``min_bbox_size``, class-wise NMS (ONNX ``NonMaxSuppression``) and
``max_per_img``. The test pipeline's resize and pad, the class names and the output conventions
are stored in the file's metadata (:data:`METADATA_KEY`), so the file alone is enough to run it
(:class:`~mmdet_retina_plugin.deploy.OnnxRetinaNet`).

Uses ``torch.onnx.export``'s TorchScript exporter by default (``dynamo=True``: its dynamo
exporter, the same graph); NMS is a torch custom op translated to ONNX's ``NonMaxSuppression``
(:mod:`.graph_ops`).
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..models.dense_heads import RetinaNetHead
from ..models.dense_heads import retina_post_processing as post
from . import graph_ops
from .pipeline import pipeline_meta
from .winograd import winograd_convs

METADATA_KEY = 'mmdet_retina_plugin'
# Keys of the head's ``test_cfg.nms`` the graph implements (mmcv's plain ``nms``).
_NMS_KEYS = frozenset({'type', 'iou_threshold', 'class_agnostic', 'split_thr'})


def check_test_cfg(test_cfg: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The post-processing settings of ``test_cfg``, or ValueError naming what the graph
    cannot express.

    Args:
        test_cfg (dict | None): the head's ``test_cfg``.

    Returns:
        dict: ``nms_pre`` (<= 0: every candidate), ``score_thr``, ``min_bbox_size``,
        ``iou_threshold``, ``class_agnostic`` and ``max_per_img``.
    """
    if not test_cfg:
        raise ValueError('model test_cfg is missing: the graph needs nms, max_per_img')
    if test_cfg.get('with_nms', True) is False:
        raise ValueError('test_cfg with_nms=False cannot be exported: the graph always runs NMS '
                         '(export with postprocess=False / --no-postprocess for raw outputs)')
    nms = test_cfg.get('nms')
    if nms is None:
        raise ValueError('test_cfg.nms is missing: the graph always runs NMS')
    nms_type = nms.get('type', 'nms')
    if nms_type != 'nms':
        raise ValueError(f'test_cfg.nms.type={nms_type!r} cannot be exported: ONNX '
                         f'NonMaxSuppression is plain greedy NMS (type="nms")')
    extra = set(nms) - _NMS_KEYS
    if extra:
        raise ValueError(f'test_cfg.nms options {sorted(extra)} cannot be exported')
    score_thr = float(test_cfg.get('score_thr', 0.0))
    if score_thr < 0:
        raise ValueError(f'test_cfg.score_thr must be >= 0 to be exported, got {score_thr}')
    min_size = float(test_cfg.get('min_bbox_size', -1))
    if min_size > 0:
        raise ValueError(f'test_cfg.min_bbox_size={min_size:g} cannot be exported: mmdet applies '
                         'it in original-image pixels, which the graph does not know (0 or -1 '
                         'can)')
    max_per_img = int(test_cfg.get('max_per_img', 0))
    if max_per_img <= 0:
        raise ValueError(f'test_cfg.max_per_img must be > 0 to be exported, got {max_per_img}')
    return dict(nms_pre=int(test_cfg.get('nms_pre', -1)), score_thr=score_thr,
                min_bbox_size=min_size, iou_threshold=float(nms['iou_threshold']),
                class_agnostic=bool(nms.get('class_agnostic', False)), max_per_img=max_per_img)


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
            raise ValueError(f'model.bbox_head must be RetinaNetHead (mmdet_retina_plugin) to be '
                             f'exported, got {type(head).__name__}')
        self.detector = detector
        self.bgr_to_rgb = bgr_to_rgb
        self.postprocess = postprocess
        self.settings = check_test_cfg(head.test_cfg) if postprocess else None
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
        cfg = self.settings
        head = self.head
        num_classes = head.cls_out_channels
        logits, labels, deltas, cand_anchors = [], [], [], []
        for cls_score, bbox_pred, level_anchors in zip(cls_scores, bbox_preds, anchors):
            batch, _, height, width = cls_score.shape
            flat_logits = cls_score.reshape(batch, -1)
            if cfg['nms_pre'] > 0:
                top, flat = graph_ops.level_topk(flat_logits, cfg['nms_pre'])
            else:
                top = flat_logits
                flat = torch.arange(flat_logits.size(1), device=top.device).expand_as(top)
            # native (B, A*K, H, W) layout: flat = (a*K + k) * H*W + pixel, as the head reads it;
            # no `%` by the symbolic H*W (the exporter has no remainder by a symbolic scalar)
            channel = flat // (height * width)
            pixel = flat - channel * (height * width)
            level_deltas, level_cand = post.gather_level(bbox_pred, level_anchors,
                                                         channel // num_classes, pixel)
            deltas.append(level_deltas)
            cand_anchors.append(level_cand)
            logits.append(top)
            labels.append(channel % num_classes)
        scores = torch.cat(logits, 1).sigmoid()
        labels = torch.cat(labels, 1)
        boxes = post.decode_boxes(head.bbox_coder, torch.cat(cand_anchors, 1),
                                  torch.cat(deltas, 1))
        if getattr(head.bbox_coder, 'clip_border', True):
            boxes = post.clip_boxes(boxes, img_shapes.to(boxes.dtype))
        valid = scores > cfg['score_thr']
        if cfg['min_bbox_size'] >= 0:
            valid = valid & post.min_size_mask(boxes, cfg['min_bbox_size'])
        nms_boxes = boxes if cfg['class_agnostic'] else \
            graph_ops.class_offset_boxes(boxes, labels, valid)
        nms_scores = torch.where(valid, scores, scores.new_tensor(graph_ops.REJECTED_SCORE))
        selected = graph_ops.onnx_nms(nms_boxes, nms_scores[:, None], cfg['max_per_img'],
                                      cfg['iou_threshold'])
        return graph_ops.pack_detections(selected, boxes, scores, labels, cfg['max_per_img'])


def _load_detector(config: Union[str, Path, Any], checkpoint: Union[str, Path]
                   ) -> Tuple[nn.Module, Any]:
    from mmdet.apis import init_detector
    from mmengine.config import Config

    import mmdet_retina_plugin  # noqa: F401  (registers our modules for the config)

    if not Path(checkpoint).is_file():
        raise ValueError(f'checkpoint not found: {checkpoint}')
    cfg = Config.fromfile(str(config)) if isinstance(config, (str, Path)) \
        else copy.deepcopy(config)
    model = init_detector(cfg, str(checkpoint), device='cpu')
    return model.eval(), cfg


def _input_hw(meta: Dict[str, Any], input_size: Optional[Sequence[int]]) -> Tuple[int, int]:
    """The example (and, without ``dynamic``, the fixed) input size: ``input_size``, or the
    test resize's scale ``(h, w)`` padded to the divisor."""
    divisor = meta['pad_size_divisor']
    if input_size is not None:
        height, width = (int(v) for v in input_size)
        if height < 1 or width < 1 or height % divisor or width % divisor:
            raise ValueError(f'input_size must be positive multiples of the pad divisor '
                             f'{divisor}, got {height} x {width}')
        return height, width
    resize = meta['resize']
    if resize is None or not resize['scale']:
        raise ValueError('input_size is required: the test pipeline fixes no image size')
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
            test resize's scale, padded.
        dynamic (bool): batch size, height and width free (height and width multiples of the
            pad divisor).
        batch_size (int): the fixed batch size without ``dynamic``.
        dynamo (bool): ``torch.onnx.export``'s dynamo exporter (``torch.export`` +
            onnxscript) instead of the TorchScript one; the same graph, 5 to 10 times slower
            to export.
        winograd (bool | None): compute the network's 3x3 stride-1 convolutions of >= 192
            input and output channels with Winograd F(4x4, 3x3) (:mod:`.winograd`): a quarter
            of their arithmetic, results within float32 rounding (~1e-5 relative) of the
            direct ones. None: with the TorchScript exporter, not with ``dynamo`` (its
            symbolic shapes make each Winograd call take seconds to export: an R50 graph
            did not finish in 14 minutes).

    Returns:
        Path: ``out``.

    Raises:
        ValueError: a missing checkpoint, a head that is not :class:`RetinaNetHead`, or a
            test-time option the graph cannot express (named in the message).
    """
    if opset < (18 if dynamo else 11):
        raise ValueError(f'opset must be >= {18 if dynamo else 11} with dynamo={dynamo}, got '
                         f'{opset}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    model, cfg = _load_detector(config, checkpoint)
    meta = pipeline_meta(cfg, model.dataset_meta.get('classes', ()))
    graph = RetinaNetGraph(model, meta['mean'], meta['std'], meta['bgr_to_rgb'], postprocess)
    # after RetinaNetGraph has checked the head
    if winograd is None:
        winograd = not dynamo
    replaced = list(winograd_convs(model)) if winograd else []
    height, width = _input_hw(meta, input_size)
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
                test_cfg=graph.settings, num_classes=graph.head.num_classes,
                winograd_convs=replaced)
    _write_metadata(out, meta)
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


def _write_metadata(path: Path, meta: Dict[str, Any]) -> None:
    """Stores ``meta`` as JSON under :data:`METADATA_KEY` in the ONNX file's metadata."""
    import onnx

    model = onnx.load(str(path))
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None) or \
        model.metadata_props.add(key=METADATA_KEY)
    entry.value = json.dumps(meta)
    onnx.save(model, str(path))


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata :func:`export_onnx` stored in ``path``; ValueError if it has none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f'{path} has no {METADATA_KEY} metadata: not exported by '
                     'mmdet_retina_plugin.deploy.export_onnx')
