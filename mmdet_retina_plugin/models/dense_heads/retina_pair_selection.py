"""Step 1 of RetinaNet's post-processing (:mod:`.retina_post_processing`): the ``nms_pre`` best
(anchor, class) pairs of each pyramid level and image, for the whole batch, with shapes fixed by
the batch's shapes and ``nms_pre`` alone.

The logits are read in their memory order, NCHW or channels-last (no permute copy, no sigmoid
over every pair). A row's top-k is found through the maxima of blocks of its entries
(:func:`topk_rows`). On a GPU all levels are ranked together (:func:`block_topk`: two ``topk``
calls for the batch, where a loop over the levels makes two per level, each a few kernel
launches); on the CPU level by level (:func:`ranks_levels_together`). Each selected pair is
named by its index in mmdet's order of all the batch's pairs (level, row, column, base anchor,
class), from which the later steps read its class, anchor and deltas with one op each.
"""
from __future__ import annotations

import math
from functools import lru_cache
from itertools import accumulate
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ...utils.compiling import is_compiling
from .retina_gts import host_tensor
from .retina_post_settings import PostProcessSettings

#: ``(logits (B, N), k) -> (values (B, k'), column indices (B, k'))``, descending per row
TopK = Callable[[Tensor, int], Tuple[Tensor, Tensor]]

# Width of the blocks whose maxima pre-select the top-k (see topk_rows): the first pass reads
# every logit once, vectorised; the second ranks k blocks of this many.
_BLOCK = 64


def logit_floor(score_thr: float) -> float:
    """A logit below which no sigmoid score exceeds ``score_thr`` (with a small margin, so that
    counting the logits above it never undercounts the pairs whose ``sigmoid > score_thr``)."""
    if score_thr <= 0:
        return -math.inf
    if score_thr >= 1:
        return math.inf
    return math.log(score_thr / (1 - score_thr)) - 1e-3


def topk_size(cls_scores: Sequence[Tensor], settings: PostProcessSettings) -> int:
    """The ``k`` of step 1's top-k: ``nms_pre``, or with ``nms_pre <= 0`` the largest number
    of an image's pairs above ``score_thr`` on one level (one host read for all levels).

    Args:
        cls_scores (Sequence[Tensor]): ``[(B, Ab*K, Hi, Wi)]`` logits, any memory layout.
        settings (PostProcessSettings): the head's test settings.

    Returns:
        int: pairs kept per level and image.
    """
    if settings.nms_pre > 0:
        return settings.nms_pre
    floor = logit_floor(settings.score_thr)
    counts = torch.stack([(s.detach() > floor).sum((1, 2, 3)) for s in cls_scores])  # (L, B)
    return int(counts.max())


def is_pixel_major(maps: Sequence[Tensor]) -> bool:
    """Whether every ``(B, C, Hi, Wi)`` map is read pixel-major (channels-last-contiguous, and
    not all of them NCHW-contiguous too, as ``1x1`` maps are)."""
    return not all(m.is_contiguous() for m in maps) and all(
        m.is_contiguous(memory_format=torch.channels_last) for m in maps)


def level_rows(maps: Sequence[Tensor]) -> Tuple[List[Tensor], bool]:
    """Each level's ``(B, C, Hi, Wi)`` map as ``(B, C*Hi*Wi)`` rows in memory order (views, no
    copy, where every level is NCHW- or every level channels-last-contiguous).

    Returns:
        Tuple[List[Tensor], bool]: the rows, and whether they are pixel-major (column
        ``pixel * C + channel``, :func:`is_pixel_major`) rather than channel-major
        (``channel * Hi*Wi + pixel``).
    """
    if is_pixel_major(maps):
        return [m.detach().permute(0, 2, 3, 1).reshape(m.size(0), -1) for m in maps], True
    return [m.detach().reshape(m.size(0), -1) for m in maps], False


def pair_index(cols: Tensor, channels: int, area: Union[Tensor, int],
               offset: Union[Tensor, int], pixel_major: bool) -> Tensor:
    """Columns of a level's rows (:func:`level_rows`) as indices into mmdet's order of all the
    levels' pairs, ``offset + pixel * C + channel``.

    Args:
        cols (Tensor): long columns, any shape broadcasting with ``area`` and ``offset``.
        channels (int): ``C = Ab*K``.
        area (Tensor | int): the level's ``Hi*Wi``.
        offset (Tensor | int): ``C`` times the pixels of the levels before it.
        pixel_major (bool): the rows' order.

    Returns:
        Tensor: long, ``cols``' shape.
    """
    if pixel_major:
        return cols + offset
    channel = cols // area  # cols = channel * area + pixel, so: pixel * C + channel
    return cols * channels - channel * (area * channels - 1) + offset


class LevelIndex(NamedTuple):
    """Constants of :func:`block_topk` for one pyramid's sizes, ``(L, 1)`` long each (they
    broadcast against ``(B, L, k)``) unless said otherwise.

    Attributes:
        blocks (Tensor): whole ``_BLOCK``-wide blocks of each level's row.
        length (Tensor): the row's length ``C*Hi*Wi``.
        area (Tensor): ``Hi*Wi``.
        offset (Tensor): ``C`` times the pixels of the levels before it.
        tail (Tensor): ``(L, _BLOCK - 1)`` the columns after the last whole block (the ones
            ``>= length`` are none).
        inside (Tensor): ``(_BLOCK,)`` ``0 .. _BLOCK - 1``.
    """

    blocks: Tensor
    length: Tensor
    area: Tensor
    offset: Tensor
    tail: Tensor
    inside: Tensor


def level_index(sizes: Tuple[Tuple[int, int], ...], channels: int,
                device: torch.device) -> LevelIndex:
    """The :class:`LevelIndex` of ``(Hi, Wi)`` maps of ``channels`` channels (cached per
    sizes and device; made in the graph under ``torch.compile``)."""
    if is_compiling():
        return _make_level_index(sizes, channels, device)
    return _cached_level_index(sizes, channels, torch.device(device))


def _make_level_index(sizes: Tuple[Tuple[int, int], ...], channels: int,
                      device: torch.device) -> LevelIndex:
    areas = [h * w for h, w in sizes]
    lengths = [a * channels for a in areas]
    blocks = [n // _BLOCK for n in lengths]
    offsets = [0, *accumulate(lengths)][:-1]
    table = host_tensor([[b, n, a, o, *range(b * _BLOCK, (b + 1) * _BLOCK - 1)]
                         for b, n, a, o in zip(blocks, lengths, areas, offsets)],
                        torch.long, device)
    columns = table.split([1, 1, 1, 1, _BLOCK - 1], dim=1)
    return LevelIndex(*columns, host_tensor(list(range(_BLOCK)), torch.long, device))


_cached_level_index = lru_cache(maxsize=16)(_make_level_index)


def topk_rows(logits: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Per row, the ``min(k, N)`` largest entries, without sorting the whole row.

    The maxima of blocks of ``_BLOCK`` consecutive entries are computed first; the ``k``
    blocks with the largest maxima hold the row's ``k`` largest entries (a block left out has
    a maximum no larger than ``k`` other blocks', each holding an entry at least as large), so
    ``topk`` then runs over ``k * _BLOCK`` entries instead of ``N``. Only the order among equal
    values can differ from ``logits.topk(k)``.

    Args:
        logits (Tensor): ``(B, N)``, rows of unit stride (any row stride; a view is read in
            place).
        k (int): entries per row, >= 0.

    Returns:
        Tuple[Tensor, Tensor]: ``values`` ``(B, min(k, N))`` descending and their column
        indices ``(B, min(k, N))``.
    """
    batch, num = logits.shape
    k = min(k, num)
    num_blocks = num // _BLOCK
    if num_blocks <= 2 * k:  # too few blocks to pay for the first pass
        return logits.topk(k, dim=1)
    body = logits[:, :num_blocks * _BLOCK].unflatten(1, (num_blocks, _BLOCK))
    blocks = body.amax(2).topk(k, dim=1).indices  # (B, k)
    inside = torch.arange(_BLOCK, device=logits.device)
    cols = torch.cat([(blocks[..., None] * _BLOCK + inside).flatten(1),  # (B, k * _BLOCK)
                      torch.arange(num_blocks * _BLOCK, num, device=logits.device)
                      .expand(batch, -1)], 1)  # the tail that fills no block
    values, picked = logits.gather(1, cols).topk(k, dim=1)
    return values, cols.gather(1, picked)


def block_topk(rows: Sequence[Tensor], k: int, index: LevelIndex) -> Tuple[Tensor, Tensor]:
    """:func:`topk_rows` of every level at once: two ``topk`` calls for the batch, where a
    loop over the levels makes ``2 * L`` (on a GPU each is several kernel launches, which the
    host pays for one by one).

    The levels' block maxima, then the entries of their ``k`` best blocks (and the last
    ``< _BLOCK`` entries of each row, which fill no block), are laid side by side in tables
    padded with ``-inf``. Only the order among equal values can differ from each row's
    ``topk(k)``.

    Args:
        rows (Sequence[Tensor]): ``[(B, Ni)]`` per level, rows of unit stride (a view is read
            in place); ``Ni`` is ``index.length``.
        k (int): entries per level and row, >= 0.
        index (LevelIndex): the levels' constants.

    Returns:
        Tuple[Tensor, Tensor]: ``values`` ``(B, L, k)``, descending, ``-inf`` past a level's
        ``Ni`` entries; their columns ``(B, L, k)`` in ``[0, Ni)`` (clamped on the padding).
    """
    batch, levels = rows[0].size(0), len(rows)
    counts = [row.size(1) // _BLOCK for row in rows]
    maxima = rows[0].new_full((batch, levels, max(k, *counts)), float('-inf'))
    for level, (row, count) in enumerate(zip(rows, counts)):
        blocks = row[:, :count * _BLOCK].unflatten(1, (count, _BLOCK))
        if is_compiling():  # dynamo takes no strided out=; its compiler fuses the copy
            maxima[:, level, :count] = blocks.amax(2)
        else:
            torch.amax(blocks, 2, out=maxima[:, level, :count])
    picked = maxima.topk(k, dim=2).indices  # (B, L, k)
    # padding blocks point past the row, so that they never repeat the tail's columns
    picked = torch.where(picked < index.blocks, picked, index.length)
    cols = torch.cat([(picked[..., None] * _BLOCK + index.inside).flatten(2),
                      index.tail.expand(batch, -1, -1)], 2)  # (B, L, k * _BLOCK + _BLOCK - 1)
    inside = cols < index.length
    cols = torch.minimum(cols, index.length - 1)
    values = torch.stack([row.gather(1, cols[:, level]) for level, row in enumerate(rows)], 1)
    values, picked = torch.where(inside, values, float('-inf')).topk(k, dim=2)
    return values, cols.gather(2, picked)


def ranks_levels_together(rows: Sequence[Tensor], k: int) -> bool:
    """Whether :func:`select_pairs` ranks all levels at once (:func:`block_topk`) rather than
    level by level (:func:`topk_rows`): off the CPU, where every op is a kernel launch and
    the host, not the work, bounds a small batch; and only where some level's row is longer
    than ``k`` blocks. On the CPU an op costs its work alone, and the loop's is smaller: it
    pads no short level up to ``k * _BLOCK`` candidates."""
    return rows[0].device.type != 'cpu' and max(row.size(1) for row in rows) > k * _BLOCK


def select_pairs(cls_scores: Sequence[Tensor], k: int, topk: Optional[TopK] = None
                 ) -> Tuple[Tensor, Tensor]:
    """Step 1: the ``k`` best (anchor, class) pairs of each level and image.

    Args:
        cls_scores (Sequence[Tensor]): ``[(B, Ab*K, Hi, Wi)]`` logits; channel ``a*K + k`` is
            class ``k`` of base anchor ``a``. Read in their memory order, NCHW or
            channels-last, without a copy.
        k (int): pairs kept per level and image.
        topk (TopK, optional): a row-wise top-k applied level by level (the exporter's has a
            fixed output width); None: :func:`block_topk` for all levels at once where
            :func:`ranks_levels_together`, else :func:`topk_rows` level by level.

    Returns:
        Tuple[Tensor, Tensor]: ``values`` ``(B, M)`` logits (``-inf`` for padding, never a
        pair) and their long indices ``(B, M)`` into mmdet's order of all levels' pairs
        (level, row, column, base anchor, class). ``M`` is ``L * k`` for :func:`block_topk`,
        else the sum of the levels' top-k widths.
    """
    rows, pixel_major = level_rows(cls_scores)
    channels = cls_scores[0].size(1)
    if topk is None and ranks_levels_together(rows, k):
        sizes = tuple((s.size(2), s.size(3)) for s in cls_scores)
        index = level_index(sizes, channels, cls_scores[0].device)
        values, cols = block_topk(rows, k, index)
        return values.flatten(1), pair_index(cols, channels, index.area, index.offset,
                                              pixel_major).flatten(1)
    values, pairs, offset = [], [], 0
    for row, cls_score in zip(rows, cls_scores):
        level_values, cols = (topk or topk_rows)(row, k)
        values.append(level_values)
        pairs.append(pair_index(cols, channels, cls_score.size(2) * cls_score.size(3), offset,
                                pixel_major))
        offset = offset + row.size(1)
    return torch.cat(values, 1), torch.cat(pairs, 1)
