"""Precise BatchNorm statistics: running mean/var recomputed over many batches (detectron2's
PreciseBN) before the model is validated and saved."""
from __future__ import annotations

import itertools
import random
import time
from typing import Any, Dict, Iterable, Iterator, Optional

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.dist import all_reduce, get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ...models.layers.frozen_batch_norm import RetinaFrozenBN
from ...utils.errors import RetinaConfigError

DataBatch = Dict[str, Any]


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable[DataBatch], num_iters: int) -> int:
    """Sets every training-mode BatchNorm's running mean and variance to their averages over
    ``num_iters`` batches: the per-batch mean and (unbiased) variance each training step
    normalises with, averaged with equal weights.

    BN's own running statistics are an exponential average (momentum 0.1) over the last ~10
    batches, taken while the weights were still changing; at batch size 4 that is a noisy
    estimate of what the final weights produce. Only the running statistics change: weights,
    ``num_batches_tracked``, momenta and the model's mode are restored. Under
    ``torch.distributed`` each process averages over its own batches and the results are
    averaged over processes, so every rank ends with the same statistics.

    Args:
        model (nn.Module): an mmdet detector (``data_preprocessor`` and
            ``forward(mode='tensor')``), not wrapped.
        batches (Iterable[DataBatch]): data batches as the train dataloader yields them
            (``inputs``: list of ``(3, H, W)`` uint8 tensors, ``data_samples``).
        num_iters (int): batches to average over (>= 1); ``batches`` must yield at least that
            many.

    Returns:
        int: number of BatchNorm layers updated (0: the model has none in training mode).

    Raises:
        RetinaConfigError: if ``num_iters`` < 1 or ``batches`` runs out first.
    """
    if num_iters < 1:
        raise RetinaConfigError(f'num_iters must be >= 1, got {num_iters}')
    was_training = model.training
    model.train()
    # Layers a module keeps in eval mode on train() (mmdet's norm_eval=True, frozen stages) are
    # meant to keep their statistics, as frozen norms are in any mode.
    layers = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
              and m.track_running_stats and not isinstance(m, RetinaFrozenBN)]
    if not layers:
        model.train(was_training)
        return 0
    saved = [(bn.momentum, bn.num_batches_tracked.clone(), bn.running_mean.clone(),
              bn.running_var.clone()) for bn in layers]
    means = [torch.zeros_like(bn.running_mean) for bn in layers]
    variances = [torch.zeros_like(bn.running_var) for bn in layers]
    # momentum 1: after each forward the running buffers hold exactly that batch's statistics.
    for bn in layers:
        bn.momentum = 1.0
    try:
        done = 0
        for batch in itertools.islice(batches, num_iters):
            model(**model.data_preprocessor(batch, True), mode='tensor')
            done += 1
            for bn, mean, var in zip(layers, means, variances):
                mean += (bn.running_mean - mean) / done
                var += (bn.running_var - var) / done
        if done < num_iters:
            raise RetinaConfigError(
                f'batches yielded {done} batches, fewer than num_iters={num_iters}')
    finally:
        # Everything as it was (a failed pass included); the averages are copied in below.
        for bn, (momentum, tracked, mean, var) in zip(layers, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        model.train(was_training)
    for bn, mean, var in zip(layers, means, variances):
        all_reduce(mean, op='mean')  # no-op without torch.distributed
        all_reduce(var, op='mean')
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return len(layers)


def sample_batches(loader: DataLoader, seed: int, rank: int = 0,
                   world_size: int = 1) -> Iterator[DataBatch]:
    """Endless batches of ``loader``'s dataset, batch size and collate function, in an order
    fixed by ``seed``, loaded in this process; under ``torch.distributed``, this rank's shard.

    A separate loader leaves the training loader's workers, sampler and augmentation random
    streams untouched, so recomputing statistics does not change the training run. Every rank
    draws the same seeded permutation of the whole data set per pass and takes every
    ``world_size``-th index of it from position ``rank`` (as ``DistributedSampler`` splits it),
    so the ranks' batches are disjoint within a pass and together cover it.

    Args:
        loader (DataLoader): the training loader (dataset, batch size, collate function).
        seed (int): order of the batches; the same on every run.
        rank (int): this process's rank, in ``[0, world_size)``.
        world_size (int): number of processes, >= 1.

    Yields:
        DataBatch: collated batches of ``loader.batch_size`` samples (fewer at a pass's end).

    Raises:
        RetinaConfigError: if ``world_size`` < 1, ``rank`` is outside ``[0, world_size)`` or
            the data set has fewer samples than ranks (a rank would wait for batches forever).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise RetinaConfigError(
            f'rank must be in [0, world_size) with world_size >= 1, got rank={rank}, '
            f'world_size={world_size}')
    if len(loader.dataset) < world_size:
        raise RetinaConfigError(
            f'the training set must hold at least world_size={world_size} samples, '
            f'got {len(loader.dataset)}')
    generator = torch.Generator().manual_seed(seed)
    while True:
        # RandomSampler's draw, so that one process averages the batches it always did.
        order = list(RandomSampler(loader.dataset, generator=generator))
        yield from DataLoader(loader.dataset, batch_size=loader.batch_size,
                              sampler=order[rank::world_size], collate_fn=loader.collate_fn,
                              num_workers=0)


class _FrozenRandomState:
    """Restores Python's, NumPy's and torch's global random states on exit: augmentations of
    the extra batches draw from them, and training must go on with the draws it would have had."""

    def __enter__(self) -> None:
        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                       torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def __exit__(self, *exc: Any) -> None:
        py, npy, cpu, cuda = self.states
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@HOOKS.register_module()
class RetinaPreciseBNHook(Hook):
    """Recomputes BatchNorm statistics (:func:`update_bn_stats`) over ``num_iters`` training
    batches every ``interval`` epochs (or iterations) and after the last one, before that
    step's validation and checkpoint.

    With small batches BN's running statistics, an exponential average over the last ~10
    batches, are a noisy estimate of what the final weights produce, and evaluation uses them
    (detectron2's ``TEST.PRECISE_BN``, also 200 iterations by default there). The extra
    batches come from a separate, seeded loader over the training set with its pipeline
    (augmentations included) and the global random states are restored afterwards, so training
    itself is unchanged: weights and every later batch are bit-identical to a run without the
    hook; only the BN buffers differ. Models without BatchNorm in training mode are left as is.
    Under ``torch.distributed`` each rank averages ``num_iters`` batches of its own shard of the
    training set (:func:`sample_batches`) and the statistics are then averaged over the ranks,
    so all ranks end with the same buffers, computed from ``world_size * num_iters`` batches.

    Args:
        num_iters (int): training batches to average over, per rank (detectron2: 200). >= 1.
        interval (int): run every ``interval`` epochs (``by_epoch``) or iterations, and always
            after the last. >= 1; a value >= the schedule's length runs once, at the end.
        by_epoch (bool): count ``interval`` in epochs (``EpochBasedTrainLoop``) or iterations.
        seed (int): order of the extra batches; the same batches on every run.
    """

    # Before CheckpointHook (VERY_LOW) saves the epoch and before validation (which runs after
    # all after_train_epoch hooks).
    priority = 'ABOVE_NORMAL'

    def __init__(self, num_iters: int = 200, interval: int = 1, by_epoch: bool = True,
                 seed: int = 0) -> None:
        if not isinstance(num_iters, int) or num_iters < 1:
            raise RetinaConfigError(f'num_iters must be an int >= 1, got {num_iters!r}')
        if not isinstance(interval, int) or interval < 1:
            raise RetinaConfigError(f'interval must be an int >= 1, got {interval!r}')
        self.num_iters = num_iters
        self.interval = interval
        self.by_epoch = by_epoch
        self.seed = seed

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval)
                              or self.is_last_train_epoch(runner)):
            self._update(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[DataBatch] = None,
                         outputs: Optional[dict] = None) -> None:
        if not self.by_epoch and (self.every_n_train_iters(runner, self.interval)
                                  or self.is_last_train_iter(runner)):
            self._update(runner)

    def _update(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        rank, world_size = get_dist_info()
        start = time.perf_counter()
        with _FrozenRandomState():
            batches = sample_batches(runner.train_dataloader, self.seed, rank, world_size)
            count = update_bn_stats(model, batches, self.num_iters)
        shards = f' on each of {world_size} ranks (own shards)' if world_size > 1 else ''
        runner.logger.info(
            f'PreciseBN: statistics of {count} BatchNorm layers averaged over '
            f'{self.num_iters} batches{shards} ({time.perf_counter() - start:.1f} s)')
