"""How per-anchor losses become per-level values, and the moving average of their normaliser."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..losses.focal_eager import segment_sums


def level_sums(values: Tensor, level_sizes: Sequence[int]) -> Tensor:
    """Sums a per-anchor quantity over each pyramid level (all images, all trailing entries).

    Args:
        values (Tensor): ``(B, A, ...)``, each image's ``A = sum(level_sizes)`` anchors level
            by level.
        level_sizes (Sequence[int]): anchors per level ``Hi*Wi*Ab``.

    Returns:
        Tensor: ``(L,)`` the sums, in ``values``' dtype.
    """
    return segment_sums(values.reshape(values.size(0), values.size(1), -1).sum(2).flatten(),
                        level_sizes)


def moving_average(ema: Tensor, count: Tensor, momentum: float, update: bool) -> Tensor:
    """One step of the normaliser's moving average, without a host sync.

    ``ema = momentum * ema + (1 - momentum) * count``, started from the first count: an
    ``ema`` <= 0 means no step has been seen yet. A real average is >= 1, since each image
    counts at least one positive.

    Args:
        ema (Tensor): scalar buffer holding the average.
        count (Tensor): scalar, this step's normaliser.
        momentum (float): in ``[0, 1)``.
        update (bool): write the new average into ``ema`` (training mode).

    Returns:
        Tensor: the new average (scalar, no gradient).
    """
    count = count.detach().to(ema.dtype)
    new = torch.where(ema > 0, momentum * ema + (1 - momentum) * count, count)
    if update:
        ema.copy_(new)
    return new
