"""Run a detector checkpoint on images and draw boxes, labels and scores into PNGs.

Uses mmdet's ``init_detector`` / ``inference_detector`` (the config's test pipeline) and
``DetLocalVisualizer``. Class names come from the checkpoint's ``meta.dataset_meta`` (saved by
mmengine's Runner from the training dataset), falling back to the config's dataset metainfo.
"""
from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import List, Optional

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def list_images(img_or_dir: str | Path) -> List[Path]:
    """The image itself, or the images directly inside a folder (sorted by name)."""
    path = Path(img_or_dir)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        images = [path]
    else:
        raise ValueError(f'img_or_dir must be an image or a folder of images, got {path}')
    if not images:
        raise ValueError(f'img_or_dir has no images ({", ".join(IMAGE_SUFFIXES)}): {path}')
    return images


def run_inference(img_or_dir: str | Path, config: Optional[str | Path],
                  checkpoint: Optional[str | Path], out_dir: str | Path, score_thr: float = 0.3,
                  device: Optional[str] = None, onnx: Optional[str | Path] = None) -> List[dict]:
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

    Returns:
        List[dict]: one dict per image: ``file``, ``out_file`` and the kept detections as ``bboxes``
        (D, 4) ``(x1, y1, x2, y2)`` in original image pixels, ``scores`` (D,) and ``labels`` (D,)
        (0-based class indices into ``classes``), plus ``classes``.
    """
    if not 0.0 <= score_thr <= 1.0:
        raise ValueError(f'score_thr must be in [0, 1], got {score_thr}')
    if onnx is None and (config is None or checkpoint is None):
        raise ValueError('config and checkpoint are required without onnx')
    import mmcv
    import torch
    from mmdet.visualization import DetLocalVisualizer

    import mmdet_retina_plugin  # noqa: F401  (registers our modules for the config)

    images = list_images(img_or_dir)
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


def main(args: argparse.Namespace) -> List[dict]:
    return run_inference(args.img_or_dir, args.config, args.checkpoint, args.out,
                         args.score_thr, args.device, onnx=args.onnx)
