"""The focal loss paper's Figure 1 and its prior-initialisation argument, from our own modules.

* Figure 1: focal loss ``FL(p_t) = -(1 - p_t)^gamma * log(p_t)`` against ``p_t`` for
  ``gamma in {0, 0.5, 1, 2, 5}``, evaluated by :class:`RetinaFocalLoss` itself (``alpha=None``).
* Prior table: the initial classification loss (binary cross-entropy summed over 1 positive and
  N negatives) of an actually built and initialised :class:`RetinaNetHead`, whose ``retina_cls``
  bias sets the initial foreground probability ``p = sigmoid(bias)``; ``prior_prob`` 0.01 vs 0.5.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

FIGURE1_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0)
TABLE_NEGATIVES: Tuple[int, ...] = (10, 100, 1_000, 10_000)
TABLE_PRIORS: Tuple[float, float] = (0.01, 0.5)

# Values quoted by a widely read RetinaNet tutorial, which rounds them, for prior 0.01 and 0.5
# and their ratio.
TUTORIAL_TABLE: Dict[str, List[float]] = {
    'loss_prior_0.01': [4.705, 5.605, 14.605, 104.605],
    'loss_prior_0.5': [7.623, 69.993, 693.693, 6930.693],
    'ratio': [1.62, 12.49, 47.5, 66.26],
}
TUTORIAL_DIFFERENCES = (
    'The tutorial rounds -log(0.01) = 4.60517 to 4.605, -log(1 - 0.01) = 0.0100503 to 0.01 and '
    'ln 2 = 0.6931472 to 0.693. The per-negative terms dominate as N grows: each negative loses '
    '5.03e-5 (prior 0.01) or 1.47e-4 (prior 0.5), so at N = 10,000 the tutorial\'s sums are 0.50 '
    'and 1.47 too small (104.605 vs 105.109, 6930.693 vs 6932.165) and its ratio 66.26 is 65.95 '
    'exactly. Its ratios are also rounded from its own sums: 12.49 = 69.993 / 5.605 (exact '
    '12.48) and 47.5 = 693.693 / 14.605 = 47.497 (exact 47.34).')


def focal_loss_curves(p_t: torch.Tensor,
                      gammas: Sequence[float] = FIGURE1_GAMMAS) -> Dict[float, torch.Tensor]:
    """Focal loss of a positive with probability ``p_t``, evaluated by ``RetinaFocalLoss``.

    Args:
        p_t (torch.Tensor): (P,) probabilities of the ground-truth class, in (0, 1).
        gammas (Sequence[float]): focusing parameters, one curve each.

    Returns:
        Dict[float, torch.Tensor]: ``{gamma: (P,) float64 loss}``, with ``alpha=None`` (no class
        weighting).
    """
    from mmdet.registry import MODELS

    import mmdet_retina_plugin  # noqa: F401  (registers RetinaFocalLoss)
    p = p_t.double()
    # one class (K=1), label 0 = that class: every row is a positive with p = sigmoid(logit)
    logits = torch.log(p / (1 - p)).reshape(-1, 1)
    labels = torch.zeros(len(p), dtype=torch.long)
    curves = {}
    for gamma in gammas:
        loss = MODELS.build(dict(type='RetinaFocalLoss', use_sigmoid=True, gamma=gamma,
                                 alpha=None, reduction='none', loss_weight=1.0))
        curves[gamma] = loss(logits, labels).reshape(-1)
    return curves


def plot_figure1(path: str | Path, num_points: int = 400) -> Dict[float, torch.Tensor]:
    """Writes Figure 1 (loss vs p_t, one curve per gamma) as PNG; returns the curves."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    p_t = torch.linspace(1e-3, 1 - 1e-3, num_points, dtype=torch.float64)
    curves = focal_loss_curves(p_t)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    for gamma, loss in curves.items():
        ax.plot(p_t.numpy(), loss.detach().numpy(), label=f'$\\gamma$ = {gamma:g}')
    ax.axvspan(0.6, 1.0, color='0.92', zorder=0)
    ax.text(0.8, 4.5, 'well-classified\nexamples', fontsize=9, ha='center')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 5)
    ax.set_xlabel('probability of ground truth class $p_t$')
    ax.set_ylabel('loss')
    ax.set_title('Focal loss (RetinaFocalLoss, alpha=None)')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return curves


def initial_cls_logit(prior_prob: float) -> float:
    """The ``retina_cls`` bias of a freshly built and ``init_weights()``-ed ``RetinaNetHead``.

    Raises:
        ValueError: if the bias is not one constant (the prior init sets every class alike).
    """
    from mmdet.registry import MODELS

    import mmdet_retina_plugin  # noqa: F401  (registers RetinaNetHead)
    head = MODELS.build(dict(type='RetinaNetHead', num_classes=1, in_channels=8,
                             stacked_convs=1, feat_channels=8, prior_prob=prior_prob))
    head.init_weights()
    bias = head.retina_cls.bias.detach().double()
    if not torch.all(bias == bias[0]):
        raise ValueError(f'retina_cls bias is not constant after init_weights(): {bias}')
    return float(bias[0])


def initial_bce(logit: float, num_negatives: int) -> float:
    """BCE summed over 1 positive and ``num_negatives`` negatives that all predict ``logit``."""
    logits = torch.full((1 + num_negatives,), logit, dtype=torch.float64)
    targets = torch.zeros_like(logits)
    targets[0] = 1.0
    return float(F.binary_cross_entropy_with_logits(logits, targets, reduction='sum'))


def prior_table(negatives: Sequence[int] = TABLE_NEGATIVES,
                priors: Tuple[float, float] = TABLE_PRIORS) -> dict:
    """Initial loss of the head for each N with the paper's prior against the plain one.

    Args:
        negatives (Sequence[int]): numbers N of negatives, one row each.
        priors (Tuple[float, float]): the paper's prior and the plain one, whose losses are
            compared.

    Returns:
        dict: ``{negatives, p_init: {prior: p}, loss_prior_<prior>: [..], ratio: [..]}`` where
        ratio is the loss with ``priors[1]`` over the loss with ``priors[0]``.
    """
    logits = {pi: initial_cls_logit(pi) for pi in priors}
    table = dict(negatives=list(negatives),
                 p_init={str(pi): float(torch.sigmoid(torch.tensor(b, dtype=torch.float64)))
                         for pi, b in logits.items()})
    for pi, b in logits.items():
        table[f'loss_prior_{pi:g}'] = [initial_bce(b, n) for n in negatives]
    low, high = (table[f'loss_prior_{pi:g}'] for pi in priors)
    table['ratio'] = [h / lo for h, lo in zip(high, low)]
    return table


def format_prior_table(table: dict) -> str:
    """Markdown table of measured values next to the tutorial's, and why they differ."""
    rows = ['| N negatives | loss, prior 0.01 (measured / tutorial) | loss, prior 0.5 '
            '(measured / tutorial) | ratio (measured / tutorial) |', '|---:|---:|---:|---:|']
    for i, n in enumerate(table['negatives']):
        cells = [f"{table[k][i]:.3f} / {TUTORIAL_TABLE[k][i]}" if i < len(TUTORIAL_TABLE[k])
                 else f'{table[k][i]:.3f}' for k in ('loss_prior_0.01', 'loss_prior_0.5')]
        ratio = f"{table['ratio'][i]:.2f}" + (
            f" / {TUTORIAL_TABLE['ratio'][i]}" if i < len(TUTORIAL_TABLE['ratio']) else '')
        rows.append(f'| {n:,} | {cells[0]} | {cells[1]} | {ratio} |')
    p = ', '.join(f'prior {k}: p = {v:.6f}' for k, v in table['p_init'].items())
    return '\n'.join(rows + ['', f'Initial p from the built heads: {p}.', '', TUTORIAL_DIFFERENCES])


def run_figures(out_dir: str | Path) -> dict:
    """Writes ``figure1_focal_loss.png``, ``prior_table.md`` and ``prior_table.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_figure1(out / 'figure1_focal_loss.png')
    table = prior_table()
    text = format_prior_table(table)
    (out / 'prior_table.md').write_text(text + '\n')
    (out / 'prior_table.json').write_text(json.dumps(table, indent=2))
    print(text)
    print(f"wrote {out / 'figure1_focal_loss.png'}, {out / 'prior_table.md'}")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='folder for the PNG and the table')


def main(args: argparse.Namespace) -> dict:
    return run_figures(args.out)
