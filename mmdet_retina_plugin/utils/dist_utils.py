"""Distributed helpers that are no-ops in a single process."""
import torch.distributed as dist
from torch import Tensor


def reduce_mean_avg_factor(avg_factor: Tensor) -> Tensor:
    """Averages a loss normaliser over all processes, clamped to at least 1.

    With per-process normalisation every rank divides its loss by its own number of positive
    anchors, so a rank that sees few objects gets a large gradient weight per anchor. Averaging
    the count first makes every rank use the same normaliser, as if one big batch were trained.

    Args:
        avg_factor (Tensor): scalar tensor ``()`` (or ``(1,)``), e.g. the number of positive
            anchors of this process's batch; any floating or integer dtype.

    Returns:
        Tensor: float tensor of the same shape and device: the mean of ``avg_factor`` over all
        ranks when ``torch.distributed`` is initialised with more than one process, else
        ``avg_factor`` itself (as float); in both cases clamped to ``>= 1`` so that a batch
        without positives does not divide by zero.
    """
    avg_factor = avg_factor.detach().float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # clone: all_reduce is in place and the caller may still hold ``avg_factor``
        avg_factor = avg_factor.clone()
        dist.all_reduce(avg_factor, op=dist.ReduceOp.SUM)
        avg_factor = avg_factor / dist.get_world_size()
    return avg_factor.clamp(min=1.0)
