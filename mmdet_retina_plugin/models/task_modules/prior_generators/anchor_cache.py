"""Caches a prior generator's anchors and valid flags, which depend only on shapes.

Within a training run the feature sizes and pad shapes repeat (fixed-size or bucketed inputs),
so regenerating the ~180k anchors of an 800x1216 image every step is wasted work.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, List, Sequence, Tuple, TypeVar

import torch
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from torch import Tensor

from ....utils.errors import RetinaConfigError

T = TypeVar('T')
SizeList = Sequence[Tuple[int, int]]


class AnchorCache:
    """Bounded LRU cache over ``AnchorGenerator.grid_priors`` / ``valid_flags``.

    Returned tensors are shared between calls: callers must not modify them in place. A hit
    costs no device work and no host sync; a miss runs mmdet's generator, which copies its base
    anchors to the device (a wait, once per new set of shapes).

    Args:
        prior_generator: the generator whose outputs are cached.
        max_entries: entries kept per cache (anchors, valid flags); the least recently used is
            dropped beyond it, so multi-scale training does not grow memory without bound.
    """

    def __init__(self, prior_generator: AnchorGenerator, max_entries: int = 8) -> None:
        if max_entries < 1:
            raise RetinaConfigError(f'max_entries must be >= 1, got {max_entries}')
        self.prior_generator = prior_generator
        self.max_entries = max_entries
        self._anchors: OrderedDict = OrderedDict()
        self._flags: OrderedDict = OrderedDict()

    def _lookup(self, cache: OrderedDict, key: Hashable, make: Callable[[], T]) -> T:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = cache[key] = make()
        if len(cache) > self.max_entries:
            cache.popitem(last=False)
        return value

    def anchors(self, featmap_sizes: SizeList, device: torch.device,
                dtype: torch.dtype) -> Tuple[Tensor, List[Tensor]]:
        """Anchors of all levels.

        Args:
            featmap_sizes (SizeList): ``(Hi, Wi)`` of each level.
            device (torch.device): device of the returned anchors.
            dtype (torch.dtype): dtype of the returned anchors.

        Returns:
            ``flat`` of shape ``(sum(Hi*Wi*A), 4)`` (x1, y1, x2, y2; level-major, then row,
            column, base anchor) and ``per_level``, views of ``flat`` of shape ``(Hi*Wi*A, 4)``.
        """
        sizes = tuple((int(h), int(w)) for h, w in featmap_sizes)

        def make() -> Tuple[Tensor, List[Tensor]]:
            levels = self.prior_generator.grid_priors(sizes, dtype=dtype, device=device)
            flat = torch.cat(levels)
            return flat, list(flat.split([lvl.size(0) for lvl in levels]))

        return self._lookup(self._anchors, (sizes, torch.device(device), dtype), make)

    def valid_flags(self, featmap_sizes: SizeList, pad_shapes: Sequence[Tuple[int, ...]],
                    device: torch.device) -> Tensor:
        """Per-image validity of every anchor (False where it sits on batch padding).

        Args:
            featmap_sizes (SizeList): ``(Hi, Wi)`` of each level.
            pad_shapes (Sequence[Tuple[int, ...]]): each image's own padded shape
                ``(h, w, ...)`` (``img_meta['pad_shape']``).
            device (torch.device): device of the returned flags.

        Returns:
            Bool tensor of shape ``(B, sum(Hi*Wi*A))``, ordered like :meth:`anchors`.
        """
        sizes = tuple((int(h), int(w)) for h, w in featmap_sizes)
        shapes = tuple((int(s[0]), int(s[1])) for s in pad_shapes)

        def make() -> Tensor:
            per_shape = {s: torch.cat(self.prior_generator.valid_flags(sizes, s, device))
                         for s in set(shapes)}
            return torch.stack([per_shape[s] for s in shapes])

        return self._lookup(self._flags, (sizes, shapes, torch.device(device)), make)
