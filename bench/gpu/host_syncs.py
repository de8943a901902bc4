"""Host-device synchronisations of the head's hot paths, counted on a GPU.

``torch.cuda.set_sync_debug_mode('warn')`` makes PyTorch warn at every operation that blocks
the host until the GPU catches up (``nonzero``, ``item``, boolean-mask indexing, copies to the
CPU, ...); the warnings raised while a function runs are its host syncs. Counted here for
``loss_by_feat`` and ``predict_by_feat`` of stock mmdet's ``RetinaHead`` and of ours, on the
same features of the same batch.

Run on a GPU machine: ``python -m bench.gpu.host_syncs [--images 8]``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

SYNC_WARNING = 'called a synchronizing CUDA operation'


def sync_warnings(fn: Callable[[], object]) -> Optional[List[warnings.WarningMessage]]:
    """Runs ``fn()`` once under CUDA's sync debug mode.

    Args:
        fn (Callable[[], object]): the work to watch; its CUDA tensors' operations are seen.

    Returns:
        List[warnings.WarningMessage] | None: one warning per synchronising operation it issued
        (``filename``/``lineno``: the Python line that issued it); None without CUDA (the debug
        mode watches CUDA streams only).
    """
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return [w for w in caught if SYNC_WARNING in str(w.message)]


def count_host_syncs(fn: Callable[[], object]) -> Optional[int]:
    """The synchronising operations ``fn()`` issues on CUDA (:func:`sync_warnings`); None
    without CUDA."""
    found = sync_warnings(fn)
    return None if found is None else len(found)


def sync_sites(fn: Callable[[], object]) -> Counter:
    """Where ``fn()`` synchronises: ``Counter`` of ``'file.py:line'`` (empty without CUDA)."""
    return Counter(f'{Path(w.filename).name}:{w.lineno}' for w in sync_warnings(fn) or [])


def head_calls(model: torch.nn.Module, data: Dict[str, list]) -> Dict[str, Callable[[], object]]:
    """``loss_by_feat`` and ``predict_by_feat`` of ``model``'s head on ``data``'s features.

    Args:
        model (nn.Module): a single-stage mmdet detector (``backbone``, ``neck``,
            ``bbox_head``) on its device.
        data (Dict[str, list]): a batch as the dataloader hands it (``inputs``, uint8
            ``(3, H, W)`` each; ``data_samples`` with ``gt_instances``).

    Returns:
        Dict[str, Callable[[], object]]: ``{'loss_by_feat': fn, 'predict_by_feat': fn}``, each
        running the head's method on the precomputed ``cls_scores`` ``(B, A*K, Hi, Wi)`` and
        ``bbox_preds`` ``(B, A*4, Hi, Wi)`` per level, without gradients.
    """
    from mmdet.models.utils import unpack_gt_instances

    batch = model.data_preprocessor(data, training=True)
    with torch.no_grad():
        cls_scores, bbox_preds = model.bbox_head(model.extract_feat(batch['inputs']))
    gts, gts_ignore, metas = unpack_gt_instances(batch['data_samples'])
    head = model.bbox_head

    def loss() -> object:
        with torch.no_grad():
            return head.loss_by_feat(cls_scores, bbox_preds, gts, metas, gts_ignore)

    def predict() -> object:
        with torch.no_grad():
            return head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=metas,
                                        rescale=False)
    return {'loss_by_feat': loss, 'predict_by_feat': predict}


def head_sync_counts(models: Dict[str, torch.nn.Module],
                     data: Dict[str, list]) -> Dict[str, Dict[str, Optional[int]]]:
    """Host syncs per batch of each head path of each model.

    Args:
        models (Dict[str, nn.Module]): e.g. ``{'stock': ..., 'ours': ...}``, on one device.
        data (Dict[str, list]): the batch (see :func:`head_calls`).

    Returns:
        Dict[str, Dict[str, int | None]]: ``{path: {model name: count}}`` (None without CUDA),
        counted on a second call (the first one warms up compilation and caches).
    """
    counts: Dict[str, Dict[str, Optional[int]]] = {}
    for name, model in models.items():
        for path, fn in head_calls(model, data).items():
            fn()
            counts.setdefault(path, {})[name] = count_host_syncs(fn)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Optional[int]]]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=8, help='batch size (800x1216 images)')
    parser.add_argument('--gts', type=int, default=8, help='gt boxes per image')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('host_syncs: no CUDA device (sync debug mode watches CUDA streams)')
    from bench.bench_train_step import make_batch
    from bench.gpu.side_by_side import build_pair
    from bench.retinanet_r50 import spread_scores

    models = build_pair('cuda')
    for model in models.values():  # detections above score_thr: predict has work to do
        spread_scores(model.bbox_head)
    data = make_batch([(800, 1216)] * args.images, args.gts)
    counts = head_sync_counts(models, data)
    lines: List[str] = [f'{path}: ' + ', '.join(f'{k} {v}' for k, v in per.items())
                        for path, per in counts.items()]
    for path, fn in head_calls(models['ours'], data).items():
        lines.append(f'ours, {path}, where: {dict(sync_sites(fn))}')
    print(f'host syncs per batch of {args.images} (CUDA sync debug mode):\n  '
          + '\n  '.join(lines))
    return counts


if __name__ == '__main__':
    main(sys.argv[1:])
