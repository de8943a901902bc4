"""Run a detector checkpoint on images and draw boxes, labels and scores into PNGs.

Uses mmdet's ``init_detector`` / ``inference_detector`` (the config's test pipeline) and
``DetLocalVisualizer``; with ``--tile H W`` the plugin's sliced inference instead
(:func:`mmdet_retina_plugin.apis.slice_inference`: overlapping tiles batched through the
detector, boxes merged in full-image pixels). Class names come from the checkpoint's
``meta.dataset_meta`` (saved by mmengine's Runner from the training dataset), falling back to the
config's dataset metainfo.
"""
from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..utils.errors import RetinaConfigError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(img_or_dir: str | Path) -> List[Path]:
    """The image itself, or the images directly inside a folder (sorted by name)."""
    path = Path(img_or_dir)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        images = [path]
    else:
        raise RetinaConfigError(f'img_or_dir must be an image or a folder of images, got {path}')
    if not images:
        raise RetinaConfigError(f'img_or_dir has no images ({", ".join(IMAGE_SUFFIXES)}): {path}')
    return images


def _sliced_predictor(model_or_onnx, tile: Sequence[int], full_image: bool,
                      options: dict) -> Callable[[Path], object]:
    """``predict(path)`` by sliced inference, with one tile runner for every image."""
    from ..apis import slice_inference, tile_detector
    detect = tile_detector(model_or_onnx)

    def predict(path: Path):
        return slice_inference(detect, path, tile=tuple(tile), full_image=full_image, **options)
    return predict


def run_inference(img_or_dir: str | Path, config: Optional[str | Path],
                  checkpoint: Optional[str | Path], out_dir: str | Path, score_thr: float = 0.3,
                  device: Optional[str] = None, onnx: Optional[str | Path] = None,
                  tile: Optional[Sequence[int]] = None, overlap: Optional[float] = None,
                  tile_batch: Optional[int] = None, merge: Optional[str] = None,
                  merge_iou_thr: Optional[float] = None, full_image: bool = False) -> List[dict]:
    """Draws the detections scoring at least ``score_thr`` on each image.

    Writes ``<out_dir>/<image stem>.png`` per image and ``<out_dir>/predictions.json``. With
    ``onnx`` (a file from ``mmdet-retina export``), ONNX Runtime computes the detections with
    the file's own pipeline and class names; ``config`` and ``checkpoint`` are then unused.

    Args:
        img_or_dir (str | Path): an image, or a folder of images.
        config (str | Path | None): the detector's mmdet config (unused with ``onnx``).
        checkpoint (str | Path | None): its weights (unused with ``onnx``).
        out_dir (str | Path): where the drawings and ``predictions.json`` go.
        score_thr (float): lowest score drawn and kept, in [0, 1].
        device (Optional[str]): torch device; the first GPU if there is one, else the CPU.
        onnx (str | Path | None): an exported ``.onnx`` file to run with ONNX Runtime instead.
        tile (Sequence[int] | None): ``(height, width)``: sliced inference with tiles of this
            size (:func:`~mmdet_retina_plugin.apis.slice_inference`); None: whole images.
        overlap (float | None): tile overlap in [0, 1) (default 0.2); only with ``tile``.
        tile_batch (int | None): tiles per forward pass (default 8); only with ``tile``.
        merge (str | None): ``'nms'`` (default) or ``'greedy'``; only with ``tile``.
        merge_iou_thr (float | None): merge threshold (default: the model's NMS IoU); only
            with ``tile``.
        full_image (bool): add a whole-image (downscaled) pass to the tiles'; only with
            ``tile``.

    Returns:
        List[dict]: one dict per image: ``file``, ``out_file`` and the kept detections as ``bboxes``
        (D, 4) ``(x1, y1, x2, y2)`` in original image pixels, ``scores`` (D,) and ``labels`` (D,)
        (0-based class indices into ``classes``), plus ``classes``.

    Raises:
        RetinaConfigError: a bad argument (named), or a tiling option without ``tile``.
    """
    if not 0.0 <= score_thr <= 1.0:
        raise RetinaConfigError(f'score_thr must be in [0, 1], got {score_thr}')
    slice_options = dict(overlap=overlap, batch_size=tile_batch, merge=merge,
                         merge_iou_thr=merge_iou_thr)
    given = [k for k, v in slice_options.items() if v is not None] + \
        (['full_image'] if full_image else [])
    if tile is None and given:
        raise RetinaConfigError(f'{", ".join(given)} need tile (--tile H W)')
    if tile_batch is not None and (isinstance(tile_batch, bool) or not isinstance(tile_batch, int)
                                   or tile_batch < 1):
        raise RetinaConfigError(f'tile_batch must be an int >= 1, got {tile_batch!r}')
    slice_options = {k: v for k, v in slice_options.items() if v is not None}
    if onnx is None and (config is None or checkpoint is None):
        raise RetinaConfigError('config and checkpoint are required without onnx')
    import mmcv
    import torch
    from mmdet.visualization import DetLocalVisualizer

    import mmdet_retina_plugin  # noqa: F401  (registers our modules for the config)

    images = list_images(img_or_dir)
    if tile is not None:  # bad tiling options fail before the model loads
        from ..apis import SliceConfig
        SliceConfig(tile=tuple(tile), full_image=full_image, **slice_options)
    if onnx is None:
        from mmdet.apis import inference_detector, init_detector
        device = device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
        model = init_detector(str(config), str(checkpoint), device=device)
        dataset_meta = model.dataset_meta

        def predict(path: Path):
            return inference_detector(model, str(path))
    else:
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData

        from ..deploy import OnnxRetinaNet
        runner = OnnxRetinaNet(onnx)
        dataset_meta = dict(classes=runner.classes)

        def predict(path: Path):
            det = runner.det([mmcv.imread(str(path))])[0]
            sample = DetDataSample()
            sample.pred_instances = InstanceData(
                **{k: torch.from_numpy(v) for k, v in det.items()})
            return sample
    if tile is not None:
        predict = _sliced_predictor(model if onnx is None else runner, tile, full_image,
                                    slice_options)
    # a unique name: mmengine keeps visualizers in a global, name-keyed registry
    visualizer = DetLocalVisualizer(name=f'mmdet_retina_infer_{uuid.uuid4().hex}')
    visualizer.dataset_meta = dataset_meta
    classes = list(dataset_meta.get('classes', ()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for image_path in images:
        result = predict(image_path)
        out_file = out / f'{image_path.stem}.png'
        image = mmcv.imread(str(image_path), channel_order='rgb')
        visualizer.add_datasample(image_path.name, image, result, draw_gt=False, show=False,
                                  pred_score_thr=score_thr, out_file=str(out_file))
        pred = result.pred_instances
        keep = pred.scores >= score_thr
        records.append(dict(file=str(image_path), out_file=str(out_file), classes=classes,
                            bboxes=pred.bboxes[keep].tolist(), scores=pred.scores[keep].tolist(),
                            labels=pred.labels[keep].tolist()))
    (out / 'predictions.json').write_text(json.dumps(records, indent=1))
    for r in records:
        print(f"{r['file']}: {len(r['scores'])} detections >= {score_thr:g} -> {r['out_file']}")
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('img_or_dir', help='an image or a folder of images')
    parser.add_argument('--config', help='required without --onnx')
    parser.add_argument('--checkpoint', help='required without --onnx')
    parser.add_argument('--onnx', default=None,
                        help='a file from mmdet-retina export: ONNX Runtime instead of PyTorch')
    parser.add_argument('--out', required=True, help='folder for the PNGs and predictions.json')
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--device', default=None, help='defaults to cuda:0 when available')
    tiles = parser.add_argument_group('sliced inference of large images')
    tiles.add_argument('--tile', type=int, nargs=2, metavar=('H', 'W'), default=None,
                       help='detect on overlapping tiles of H x W px (boxes in full-image px)')
    tiles.add_argument('--overlap', type=float, default=None,
                       help='fraction of a tile shared with its neighbour, [0, 1) (0.2)')
    tiles.add_argument('--tile-batch', type=int, default=None, help='tiles per forward (8)')
    tiles.add_argument('--merge', choices=('nms', 'greedy'), default=None,
                       help="merging across tiles: class-aware NMS or SAHI's greedy merge")
    tiles.add_argument('--merge-iou-thr', type=float, default=None,
                       help="merge threshold (the model's NMS IoU)")
    tiles.add_argument('--full-image', action='store_true',
                       help='also detect on the whole image, downscaled, and merge it in')


def main(args: argparse.Namespace) -> List[dict]:
    return run_inference(args.img_or_dir, args.config, args.checkpoint, args.out,
                         args.score_thr, args.device, onnx=args.onnx, tile=args.tile,
                         overlap=args.overlap, tile_batch=args.tile_batch, merge=args.merge,
                         merge_iou_thr=args.merge_iou_thr, full_image=args.full_image)
