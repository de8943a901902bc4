"""The GPU targets, judged from the side-by-side table's rows (``side_by_side.py``).

Each target names the rows it may be met by: the same case with stock's settings, the GPU
config or the static-shape config (any of our configs counts, as a user picks one), and the
rule the best of them must pass. A target whose rows have no numbers (skipped off a GPU, or
failed) is ``not measured``. The verdicts follow the table on the screen and go into the JSON
report, so a run on a GPU says by itself which targets it met.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # side_by_side prints the verdicts: no import back at run time
    from bench.gpu.side_by_side import Row, Sizes


@dataclass(frozen=True)
class Target:
    """One target: the rows that can meet it and the rule each is held to.

    Attributes:
        name (str): what is promised, as the verdict prints it.
        group (str): the rows' group.
        case (str): regular expression the rows' whole ``case`` matches.
        min_speedup (float, optional): stock's time over ours, at least.
        min_ours (float, optional): ours, in the row's unit, at least.
        max_ours (float, optional): ours at most (sync counts).
        max_over_reference (float, optional): ours over the row's ``reference`` time at most.
    """

    name: str
    group: str
    case: str
    min_speedup: Optional[float] = None
    min_ours: Optional[float] = None
    max_ours: Optional[float] = None
    max_over_reference: Optional[float] = None

    def check(self, row: Row) -> Optional[bool]:
        """Whether ``row`` meets the target; None where it has no number to judge."""
        if not isinstance(row.ours, (int, float)) or isinstance(row.ours, bool):
            return None
        if self.min_speedup is not None and row.speedup is None:
            return None
        if self.max_over_reference is not None and row.reference is None:
            return None
        return ((self.min_speedup is None or row.speedup >= self.min_speedup)
                and (self.min_ours is None or row.ours >= self.min_ours)
                and (self.max_ours is None or row.ours <= self.max_ours)
                and (self.max_over_reference is None
                     or row.ours <= self.max_over_reference * row.reference))


def gpu_targets(sizes: Sizes) -> List[Target]:
    """The targets for a run at ``sizes`` (set for the full sizes: 8 images of 800x1216, 8 and
    100 gts; at other sizes the images-per-second floor means little)."""
    size = f'{sizes.hw[0]}x{sizes.hw[1]}'
    (images, few), (_, many) = sizes.train[1], sizes.train[2]
    n = sizes.batch
    ours_configs = '(: GPU config|: static config)?'
    return [
        Target("focal loss fwd+bwd fp32 >= 2x mmcv's op", 'focal', r'focal loss .* fp32',
               min_speedup=2.0),
        Target('focal loss fwd+bwd fp32 <= 3x a clone of the logits', 'focal',
               r'focal loss .* fp32', max_over_reference=3.0),
        Target('focal loss fwd+bwd in bf16 runs', 'focal', r'focal loss .* bf16', min_ours=0.0),
        Target(f'train step fp32, {images} images, {few} gts >= 1.5x', 'train',
               re.escape(f'train step fp32, {images} images {size}, {few} gts') + ours_configs,
               min_speedup=1.5),
        Target(f'train step fp32, {images} images, {many} gts >= 2x', 'train',
               re.escape(f'train step fp32, {images} images {size}, {many} gts') + ours_configs,
               min_speedup=2.0),
        Target(f"train step bf16 >= 2x stock's AMP fp16, {n} images", 'train',
               re.escape(f'train step AMP, {n} images: stock fp16, bf16 ') + '(static )?config',
               min_speedup=2.0),
        Target(f'train step bf16 >= 150 img/s, {n} images of {size}', 'train',
               re.escape(f'train step AMP, {n} images: stock fp16, bf16 ') + '(static )?config',
               min_ours=150.0),
        Target('inference fp32, batch 1 >= 1.3x', 'inference',
               r'inference fp32, batch 1' + ours_configs, min_speedup=1.3),
        Target(f'inference fp32, batch {n} >= 1.5x', 'inference',
               re.escape(f'inference fp32, batch {n}') + ours_configs, min_speedup=1.5),
        Target('host syncs of loss_by_feat per batch: 0', 'syncs', r'.*loss_by_feat',
               max_ours=0),
        Target('host syncs of predict_by_feat per batch: <= 2', 'syncs', r'.*predict_by_feat',
               max_ours=2),
    ]


def judge(target: Target, rows: Sequence[Row]) -> Tuple[str, str]:
    """``('met' | 'not met' | 'not measured', detail)``: the best row that meets the target
    (highest speed-up), else the best measured one, else why none has a number."""
    candidates = [r for r in rows if r.group == target.group
                  and re.fullmatch(target.case, r.case)]
    if not candidates:
        return 'not measured', 'no such row in this run'
    judged = [(target.check(r), r) for r in candidates]
    measured = [(ok, r) for ok, r in judged if ok is not None]
    if not measured:
        return 'not measured', '; '.join(sorted({str(r.ours) for r in candidates}))
    ok, best = max(measured, key=lambda m: (m[0], m[1].speedup or 0.0))
    parts = [f'{best.speedup:.2f}x'] if best.speedup is not None else []
    parts.append(f'ours {best.ours:.4g} {best.unit}')
    if target.max_over_reference is not None:
        parts.append(f'{best.ours / best.reference:.2f}x the reference {best.reference:.4g}')
    return ('met' if ok else 'not met'), f'{", ".join(parts)} ({best.case})'


def verdicts(rows: Sequence[Row], sizes: Sizes) -> List[str]:
    """One line per target: verdict, target, the deciding row's numbers."""
    lines = []
    for target in gpu_targets(sizes):
        verdict, detail = judge(target, rows)
        lines.append(f'{verdict:12s} {target.name}: {detail}')
    return lines
