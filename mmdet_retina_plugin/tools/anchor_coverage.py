"""Anchor coverage of a COCO annotation file under a config's anchor settings.

A gt box whose best anchor IoU is below the assigner's ``pos_iou_thr`` gets no regular positive
anchor: it is only trained through low-quality matching (``min_pos_iou``), with one poorly fitting
anchor. This tool measures how many gts are in that situation, as the model sees them:

* gt boxes are scaled by the config's ``Resize`` (``scale``, ``keep_ratio``) exactly as mmdet's
  pipeline does, and the image is padded to the data preprocessor's ``pad_size_divisor``;
* anchors come from mmdet's ``AnchorGenerator`` (built from the head's ``anchor_generator``) over
  the feature sizes of the padded image, ``ceil(padded / stride)`` per level.

It then searches a small grid of ``octave_base_scale`` / ``scales_per_octave`` / ``ratios`` and
lists settings that raise coverage. How the model sees the gts (resize, padding, the config's
fields) is in :mod:`.coverage_view`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config

from ..engine.hooks.assign_stats_hook import level_names
from ..utils.errors import RetinaConfigError
from .coverage_view import GtSet, ModelView, load_gts, model_view_from_config

if TYPE_CHECKING:
    from mmdet.models.task_modules.prior_generators import AnchorGenerator

# COCO's area ranges (pycocotools COCOeval.Params.areaRng), on the annotation's ``area``.
COCO_SIZE_CLASSES: Tuple[Tuple[str, float, float], ...] = (
    ('small', 0.0, 32.0 ** 2),
    ('medium', 32.0 ** 2, 96.0 ** 2),
    ('large', 96.0 ** 2, math.inf),
)
# Edges of the size bins, on sqrt(area) of the box as the model sees it (after Resize).
SIZE_BIN_EDGES: Tuple[float, ...] = (0, 16, 32, 64, 128, 256, 512, math.inf)

SEARCH_OCTAVE_BASE_SCALES: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
SEARCH_SCALES_PER_OCTAVE: Tuple[int, ...] = (1, 2, 3, 4)
SEARCH_RATIOS: Tuple[Tuple[float, ...], ...] = (
    (0.5, 1.0, 2.0),
    (1 / 3, 0.5, 1.0, 2.0, 3.0),
    (0.25, 0.5, 1.0, 2.0, 4.0),
)


def build_anchor_generator(anchor_generator: dict) -> 'AnchorGenerator':
    """Builds mmdet's anchor generator from its config (TASK_UTILS)."""
    from mmdet.registry import TASK_UTILS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    return TASK_UTILS.build(anchor_generator)


def _best_iou_in_level(boxes: torch.Tensor, anchors: torch.Tensor, featmap_size: Tuple[int, int],
                      stride: Tuple[float, float], num_base: int) -> torch.Tensor:
    """Best IoU of each box with one level's anchor grid, checking one anchor per base shape.

    For anchors of one shape, IoU = I / (S_anchor + S_box - I) grows with the intersection I,
    and I = overlap_x(|dx|) * overlap_y(|dy|) with both factors non-increasing in the centre
    offset: the grid cell nearest to the box centre along each axis holds the best anchor of
    that shape. So only G x A candidates are scored, instead of G x H x W x A.

    Args:
        boxes (torch.Tensor): (G, 4) gt boxes.
        anchors (torch.Tensor): (H*W*A, 4) the level's anchors as ``grid_priors`` lays them out
            (row-major cells, then base anchors).
        featmap_size (Tuple[int, int]): (H, W).
        stride (Tuple[float, float]): (stride_w, stride_h).
        num_base (int): A, base anchors per cell.

    Returns:
        torch.Tensor: (G,) best IoU.
    """
    from mmdet.structures.bbox import bbox_overlaps
    h, w = featmap_size
    grid = anchors.view(h, w, num_base, 4)
    origin = (grid[0, 0, :, :2] + grid[0, 0, :, 2:]) / 2  # (A, 2) base anchor centres of cell 0
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (G, 2)
    cell = ((centres[:, None] - origin[None]) / boxes.new_tensor(stride)).round()  # (G, A, 2)
    ix = cell[..., 0].clamp(0, w - 1).long()
    iy = cell[..., 1].clamp(0, h - 1).long()
    candidates = grid[iy, ix, torch.arange(num_base)]  # (G, A, 4)
    iou = bbox_overlaps(boxes[:, None].expand(-1, num_base, -1).reshape(-1, 4),
                        candidates.reshape(-1, 4), is_aligned=True)
    return iou.view(-1, num_base).max(dim=1).values


def best_anchor_iou(gts: GtSet, anchor_generator: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best anchor IoU of every gt box, and the pyramid level of that anchor.

    Args:
        gts (GtSet): gt boxes grouped by padded image shape.
        anchor_generator (dict): mmdet ``AnchorGenerator`` config.

    Returns:
        Tuple[torch.Tensor, torch.Tensor]: ``best_iou``, (G,) max IoU over all anchors of the
        gt's image, in the order of ``gts.all_boxes()``; ``best_level``, (G,) long, index into
        the generator's strides of the best anchor (the first level on ties).
    """
    generator = build_anchor_generator(anchor_generator)
    best_iou, best_level = [], []
    for pad_h, pad_w in gts.shapes():
        featmap_sizes = [(math.ceil(pad_h / sh), math.ceil(pad_w / sw))
                         for sw, sh in generator.strides]
        anchors = generator.grid_priors(featmap_sizes, device='cpu')
        boxes = gts.boxes[(pad_h, pad_w)]
        per_level = torch.stack([  # (G_s, L)
            _best_iou_in_level(boxes, level_anchors, size, stride, num_base)
            for level_anchors, size, stride, num_base in zip(
                anchors, featmap_sizes, generator.strides, generator.num_base_priors)], dim=1)
        iou, level = per_level.max(dim=1)
        best_iou.append(iou)
        best_level.append(level)
    if not best_iou:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(best_iou), torch.cat(best_level)


def _group_stats(below: torch.Tensor, best_iou: torch.Tensor) -> dict:
    n = int(below.numel())
    return dict(num_gts=n,
                below_thr_share=float(below.double().mean()) if n else None,
                mean_best_iou=float(best_iou.double().mean()) if n else None)


def summarize(best_iou: torch.Tensor, best_level: torch.Tensor, orig_area: torch.Tensor,
              boxes: torch.Tensor, pos_iou_thr: float, levels: Sequence[str]) -> dict:
    """Share of gts with best anchor IoU below ``pos_iou_thr``, overall and per group.

    Args:
        best_iou (torch.Tensor): (G,) best anchor IoU per gt.
        best_level (torch.Tensor): (G,) level index of the best anchor.
        orig_area (torch.Tensor): (G,) original COCO area: sets the COCO size class.
        boxes (torch.Tensor): (G, 4) resized boxes: set the size bin, on sqrt(resized area).
        pos_iou_thr (float): the assigner's positive threshold.
        levels (Sequence[str]): level names, one per anchor generator level.

    Returns:
        dict: with ``overall``, ``by_coco_size``, ``by_size_bin``, ``by_level`` groups, each
        ``{num_gts, below_thr_share, mean_best_iou}`` (shares ``None`` for empty groups), and
        ``coverage`` = 1 - overall below-threshold share.
    """
    below = best_iou < pos_iou_thr
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    by_coco = {name: _group_stats(below[m], best_iou[m]) for name, lo, hi in COCO_SIZE_CLASSES
               for m in [(orig_area >= lo) & (orig_area < hi)]}
    by_bin = {}
    for lo, hi in zip(SIZE_BIN_EDGES[:-1], SIZE_BIN_EDGES[1:]):
        m = (side >= lo) & (side < hi)
        by_bin[f'{lo:g}-{hi:g}'] = _group_stats(below[m], best_iou[m])
    by_level = {name: _group_stats(below[best_level == i], best_iou[best_level == i])
                for i, name in enumerate(levels)}
    overall = _group_stats(below, best_iou)
    coverage = None if overall['below_thr_share'] is None else 1.0 - overall['below_thr_share']
    return dict(pos_iou_thr=pos_iou_thr, coverage=coverage, overall=overall,
                by_coco_size=by_coco, by_size_bin=by_bin, by_level=by_level)


def anchor_setting(anchor_generator: dict) -> dict:
    """The searched fields of an anchor generator config."""
    return dict(octave_base_scale=anchor_generator.get('octave_base_scale'),
                scales_per_octave=anchor_generator.get('scales_per_octave'),
                ratios=[round(float(r), 4) for r in anchor_generator['ratios']],
                anchors_per_location=len(anchor_generator['ratios']) * (
                    len(anchor_generator['scales']) if anchor_generator.get('scales')
                    else anchor_generator.get('scales_per_octave') or 1))


def search_anchor_settings(gts: GtSet, view: ModelView, top: int = 5) -> List[dict]:
    """Tries a small grid of anchor settings; returns those that raise coverage, best first.

    Settings are sorted by coverage (desc), then anchors per location (asc, cheaper first). The
    best setting with no more anchors per location than the current one is always listed when it
    improves coverage, since more anchors trivially cover more.

    Args:
        gts (GtSet): the gt boxes to cover.
        view (ModelView): the model's current anchors, resize and threshold.
        top (int): most settings returned (>= 1).

    Returns:
        List[dict]: ``{**anchor_setting(...), coverage, by_coco_size, anchor_generator}`` each;
        ``by_coco_size`` maps ``all`` / ``small`` / ``medium`` / ``large`` to coverage.
    """
    if top < 1:
        raise RetinaConfigError(f'top must be >= 1, got {top}')
    base = dict(view.anchor_generator)
    base.pop('scales', None)  # the grid is expressed in octave terms
    current = coverage_of(gts, view.anchor_generator, view.pos_iou_thr)
    current_a = anchor_setting(view.anchor_generator)['anchors_per_location']
    ratio_sets = {tuple(round(float(r), 4) for r in view.anchor_generator['ratios'])}
    ratio_sets.update(tuple(round(r, 4) for r in rs) for rs in SEARCH_RATIOS)
    rows = []
    for obs, spo, ratios in itertools.product(SEARCH_OCTAVE_BASE_SCALES,
                                              SEARCH_SCALES_PER_OCTAVE, sorted(ratio_sets)):
        cfg = dict(base, octave_base_scale=obs, scales_per_octave=spo, ratios=list(ratios))
        cov = coverage_by_size(gts, cfg, view.pos_iou_thr)
        if cov['all'] is not None and current is not None and cov['all'] > current:
            rows.append(dict(anchor_setting(cfg), coverage=cov['all'], by_coco_size=cov,
                             anchor_generator=cfg))
    rows.sort(key=lambda r: (-r['coverage'], r['anchors_per_location']))
    chosen = rows[:top]
    cheap = [r for r in rows if r['anchors_per_location'] <= current_a]
    if cheap and cheap[0] not in chosen:
        chosen.append(cheap[0])
    return chosen


def coverage_of(gts: GtSet, anchor_generator: dict, pos_iou_thr: float) -> Optional[float]:
    """Share of gts whose best anchor IoU reaches ``pos_iou_thr`` (None without gts)."""
    return coverage_by_size(gts, anchor_generator, pos_iou_thr)['all']


def coverage_by_size(gts: GtSet, anchor_generator: dict,
                     pos_iou_thr: float) -> Dict[str, Optional[float]]:
    """Coverage overall (``'all'``) and per COCO size class (None for empty groups)."""
    best_iou, _ = best_anchor_iou(gts, anchor_generator)
    covered = (best_iou >= pos_iou_thr).double()
    areas = gts.all_areas()
    masks = {'all': torch.ones_like(covered, dtype=torch.bool)}
    masks.update({name: (areas >= lo) & (areas < hi) for name, lo, hi in COCO_SIZE_CLASSES})
    return {name: float(covered[m].mean()) if m.any() else None for name, m in masks.items()}


def plot_best_iou_histogram(best_iou: torch.Tensor, orig_area: torch.Tensor, pos_iou_thr: float,
                            path: str | Path, title: str = '') -> None:
    """Writes a PNG histogram of best anchor IoU, stacked by COCO size class.

    Args:
        best_iou (torch.Tensor): (G,) best anchor IoU per gt.
        orig_area (torch.Tensor): (G,) original COCO area per gt.
        pos_iou_thr (float): the assigner's positive threshold, drawn as a dashed line.
        path (str | Path): the PNG to write.
        title (str): the figure's title.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    groups = [best_iou[(orig_area >= lo) & (orig_area < hi)].numpy()
              for _, lo, hi in COCO_SIZE_CLASSES]
    ax.hist(groups, bins=40, range=(0, 1), stacked=True,
            label=[name for name, _, _ in COCO_SIZE_CLASSES])
    ax.axvline(pos_iou_thr, color='k', linestyle='--', label=f'pos_iou_thr={pos_iou_thr:g}')
    ax.set_xlabel('best anchor IoU of a gt box')
    ax.set_ylabel('gt boxes')
    ax.set_title(title or 'best anchor IoU per gt box')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt_share(x: Optional[float]) -> str:
    return '   -   ' if x is None else f'{100 * x:6.2f}%'


def _covered(group: dict) -> Optional[float]:
    share = group['below_thr_share']
    return None if share is None else 1.0 - share


def format_report(summary: dict, suggestions: List[dict], current: dict) -> str:
    """Human-readable text of :func:`summarize` and :func:`search_anchor_settings` results."""
    thr = summary['pos_iou_thr']
    lines = [f"gt boxes: {summary['overall']['num_gts']}, pos_iou_thr={thr:g}",
             f"coverage (best anchor IoU >= {thr:g}): {_fmt_share(summary['coverage'])}",
             f'share of gts with best anchor IoU < {thr:g} (only low-quality matches):']
    for group in ('by_coco_size', 'by_size_bin', 'by_level'):
        lines.append(f'  {group}:')
        for name, s in summary[group].items():
            if s['num_gts']:
                lines.append(f"    {name:>10}: {_fmt_share(s['below_thr_share'])} of "
                             f"{s['num_gts']:6d} gts, mean best IoU {s['mean_best_iou']:.3f}")
    lines.append(f"current anchors: {current}")
    if not suggestions:
        lines.append('no setting in the search grid raises coverage')
    for r in suggestions:
        lines.append(
            f"  octave_base_scale={r['octave_base_scale']} scales_per_octave="
            f"{r['scales_per_octave']} ratios={r['ratios']} (A={r['anchors_per_location']}): "
            f"coverage {_fmt_share(summary['coverage'])} -> {_fmt_share(r['coverage'])}"
            + ''.join(f", {name} {_fmt_share(_covered(summary['by_coco_size'][name]))} -> "
                      f"{_fmt_share(r['by_coco_size'][name])}"
                      for name, _, _ in COCO_SIZE_CLASSES))
    return '\n'.join(lines)


def run_coverage(ann_file: str | Path, config: str | Path, out_dir: Optional[str | Path] = None,
                 pipeline: str = 'test', pos_iou_thr: Optional[float] = None,
                 max_images: Optional[int] = None, search: bool = True, top: int = 5) -> dict:
    """Full coverage analysis; writes ``coverage.json`` and ``best_iou_hist.png`` to ``out_dir``.

    Args:
        ann_file (str | Path): COCO annotation file.
        config (str | Path): mmdet config with the anchor settings.
        out_dir (Optional[str | Path]): where to write the JSON and the PNG; nothing if None.
        pipeline (str): ``'test'`` or ``'train'``: whose ``Resize`` sets the image size.
        pos_iou_thr (Optional[float]): overrides the config's assigner threshold.
        max_images (Optional[int]): read only the first this many images.
        search (bool): also search anchor settings that raise the coverage.
        top (int): most suggested settings.

    Returns:
        dict: ``{summary, suggestions, current}`` (see :func:`summarize`,
        :func:`search_anchor_settings`).
    """
    view = model_view_from_config(Config.fromfile(str(config)), pipeline, pos_iou_thr)
    gts = load_gts(ann_file, view, max_images)
    best_iou, best_level = best_anchor_iou(gts, view.anchor_generator)
    summary = summarize(best_iou, best_level, gts.all_areas(), gts.all_boxes(),
                        view.pos_iou_thr, level_names(view.anchor_generator['strides']))
    suggestions = search_anchor_settings(gts, view, top) if search else []
    result = dict(summary=summary, suggestions=suggestions,
                  current=anchor_setting(view.anchor_generator))
    print(format_report(summary, suggestions, result['current']))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'coverage.json').write_text(json.dumps(result, indent=2))
        plot_best_iou_histogram(best_iou, gts.all_areas(), view.pos_iou_thr,
                                out / 'best_iou_hist.png',
                                f'anchor coverage: {Path(ann_file).name}')
        print(f'wrote {out / "coverage.json"} and {out / "best_iou_hist.png"}')
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('ann_file', help='COCO-format annotation json')
    parser.add_argument('--config', required=True, help='mmdet config with the anchor settings')
    parser.add_argument('--out', default=None, help='folder for coverage.json and the histogram')
    parser.add_argument('--pipeline', choices=('test', 'train'), default='test',
                        help="whose Resize sets the image size the model sees")
    parser.add_argument('--pos-iou-thr', type=float, default=None,
                        help="overrides the config's assigner pos_iou_thr")
    parser.add_argument('--max-images', type=int, default=None)
    parser.add_argument('--no-search', action='store_true', help='skip the anchor setting search')
    parser.add_argument('--top', type=int, default=5, help='settings to list from the search')


def main(args: argparse.Namespace) -> dict:
    return run_coverage(args.ann_file, args.config, args.out, args.pipeline, args.pos_iou_thr,
                        args.max_images, not args.no_search, args.top)
