"""Windows of a large image on a regular grid, shared by sliced inference and tiled training.

Windows are ``tile`` pixels high and wide and advance by ``tile * (1 - overlap)`` pixels (rounded
down, at least 1). The last row and column are shifted back inside the image instead of being
padded, so every window holds only image pixels; along a side shorter than the tile the window
covers the whole side (one window, smaller than the tile).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

from .errors import RetinaConfigError

Window = Tuple[int, int, int, int]
TileSize = Union[int, Sequence[int]]


def check_tile(tile: TileSize, name: str = 'tile') -> Tuple[int, int]:
    """``tile`` as ``(height, width)`` of positive ints.

    Args:
        tile (int | Sequence[int]): one size for both sides, or ``(height, width)``.
        name (str): the argument's name in error messages.

    Returns:
        Tuple[int, int]: ``(height, width)``.

    Raises:
        RetinaConfigError: not one or two integers >= 1.
    """
    sizes = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                  for s in sizes):
        raise RetinaConfigError(f'{name} must be an int >= 1 or (height, width) of ints >= 1, '
                                f'got {tile!r}')
    return sizes[0], sizes[1]


def check_overlap(overlap: float, name: str = 'overlap') -> float:
    """``overlap`` as a float in ``[0, 1)`` (the fraction of a tile shared with its neighbour).

    Raises:
        RetinaConfigError: outside ``[0, 1)`` or not a number.
    """
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) \
            or not 0.0 <= overlap < 1.0:
        raise RetinaConfigError(f'{name} must be a number in [0, 1), got {overlap!r}')
    return float(overlap)


def _starts(size: int, tile: int, overlap: float) -> List[int]:
    """Window starts along one side of ``size`` pixels, the last one at ``size - tile``."""
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)  # the last window ends at the border, not beyond it
    return starts


def tile_windows(height: int, width: int, tile: TileSize = 800,
                 overlap: float = 0.2) -> List[Window]:
    """The windows covering a ``height`` x ``width`` image, row by row.

    Args:
        height (int): image height in pixels, >= 1.
        width (int): image width in pixels, >= 1.
        tile (int | Sequence[int]): window size, one int or ``(height, width)``.
        overlap (float): fraction of a window shared with the next one, in ``[0, 1)``.

    Returns:
        List[Tuple[int, int, int, int]]: ``(x1, y1, x2, y2)`` pixel windows (``x2``, ``y2``
        exclusive) inside the image, ``min(tile, side)`` pixels on each side.

    Raises:
        RetinaConfigError: a non-positive image size, or a bad ``tile`` / ``overlap``.
    """
    for name, size in (('height', height), ('width', width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise RetinaConfigError(f'image {name} must be an int >= 1, got {size!r}')
    tile_h, tile_w = check_tile(tile)
    overlap = check_overlap(overlap)
    win_h, win_w = min(tile_h, height), min(tile_w, width)
    return [(x, y, x + win_w, y + win_h)
            for y in _starts(height, tile_h, overlap)
            for x in _starts(width, tile_w, overlap)]
