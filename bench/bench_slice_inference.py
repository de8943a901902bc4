"""Sliced inference against running the same tiles as one plain batch, in one process.

The target: sliced inference of a 3000x2000 image takes at most 1.2x the time of running its
tiles as one plain batch through the same detector (cropping, batching, mapping back and
merging cost at most 20 %). Both sides start from the BGR image in memory and run the config's
test pipeline, the data preprocessor, the network and the head's post-processing:

* plain ("stock" column): the tiles, cut beforehand, as one batch through mmdet's
  ``model.test_step`` (``bench_inference``'s end-to-end path); no mapping, no merging;
* sliced ("ours" column): :func:`mmdet_retina_plugin.apis.slice_inference` on the image,
  ``--tile-batch`` tiles per forward (default: all tiles in one, as the plain side; the
  API's default 8 is the second row), boxes mapped back and merged by class-aware NMS.

The ratio column is plain / sliced (>= 0.83 meets the target). The detector has random weights
with spread scores (``bench_inference._build``), so every tile has its ``max_per_img``
detections to map and merge.

Run: ``python -m bench.bench_slice_inference [--size 2000 3000] [--tile 800] [--config demo|r50]``.
"""
from __future__ import annotations

import argparse
from typing import Dict, List

import numpy as np
import torch

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.bench_inference import CASES, _build, torch_end_to_end
from bench.harness import measure_pair, report
from mmdet_retina_plugin.apis import slice_inference
from mmdet_retina_plugin.utils.tiling import tile_windows


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 BGR image of smooth random blobs (structure for the random convs)."""
    import cv2
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (max(height // 32, 2), max(width // 32, 2), 3))
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(
        0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--size', type=int, nargs=2, default=[2000, 3000], metavar=('H', 'W'))
    parser.add_argument('--tile', type=int, default=800)
    parser.add_argument('--overlap', type=float, default=0.2)
    parser.add_argument('--config', choices=list(CASES), default='demo')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.set_flush_denormal(True)  # as bench_inference: random weights make denormals
    cfg, model = _build(CASES[args.config][1])
    height, width = args.size
    image = textured(height, width)
    windows = tile_windows(height, width, args.tile, args.overlap)
    tiles = [np.ascontiguousarray(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in windows]
    plain = torch_end_to_end(cfg, model, tiles)
    rows: List[Dict[str, object]] = []
    notes = [f'{args.config} detector, {height}x{width} image, {len(windows)} tiles of '
             f'{args.tile} px, overlap {args.overlap}, torch threads={torch.get_num_threads()}']
    for batch in sorted({len(windows), 8}, reverse=True):
        def sliced(batch=batch):
            return slice_inference(model, image, tile=args.tile, overlap=args.overlap,
                                   batch_size=batch, progress=False)
        num = len(sliced().pred_instances)
        pair = measure_pair(plain, sliced, args.repeats)
        rows.append({'case': f'{args.config} {height}x{width} tiles {args.tile} batch {batch}',
                     **pair})
        ratio = pair['ours']['median_s'] / pair['stock']['median_s']
        notes.append(f'batch {batch}: sliced / plain = {ratio:.3f} ({num} detections merged)')
    report('bench_slice_inference', rows, notes)


if __name__ == '__main__':
    main()
