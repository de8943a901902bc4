"""All pyramid levels in one canvas, so that the head's shared convolutions run once per layer
instead of once per level.

The head applies the same 3x3 convs to every level. Level by level, a 5-level RetinaNet head
issues 50 convolutions and 40 ReLUs per batch; on a GPU each is at least one kernel launch
(cuDNN adds a bias launch, and layout conversions in NCHW), and with a small batch the host's
launches, not the GPU's work, set the time. On one canvas it issues 10 convolutions and 8
clamps, plus the copies in and out.

Layout (one shelf): level 0 at the top left, the other levels side by side in one row below
it, one zero row or column between neighbours. A 3x3 convolution with zero padding 1 then
sees, at each level's border, exactly the zeros its own padding would. Every conv + ReLU is
followed by a clamp to ``[0, bound]`` with ``bound`` +inf inside the levels and 0 outside,
which is the ReLU inside and resets the cells between the levels to the zeros the next
layer's padding needs, in one launch. The extra area is ~13 % for RetinaNet's pyramid
(strides 8 to 128); layouts wasting more than half are not used.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from torch import Tensor

from ...utils.compiling import is_compiling
from ...utils.errors import RetinaConfigError
from .retina_pair_selection import is_pixel_major

#: ``pack_levels='auto'`` packs CUDA batches of at most this many pyramid cells (B * sum(Hi*Wi)):
#: about three 800x1216 images, where launches outweigh the work (8 images are GPU-bound)
AUTO_MAX_CELLS = 1 << 16
#: the largest canvas area, relative to the levels' total, worth packing
MAX_AREA_RATIO = 1.5
PackLevels = Union[bool, str]


@dataclass(frozen=True)
class CanvasLayout:
    """Where each level ``(Hi, Wi)`` lies in a ``(height, width)`` canvas: ``origins[i]`` is its
    top-left ``(row, column)``."""

    sizes: Tuple[Tuple[int, int], ...]
    origins: Tuple[Tuple[int, int], ...]
    height: int
    width: int

    def slices(self, index: int) -> Tuple[slice, slice]:
        """Rows and columns of level ``index`` in the canvas."""
        (h, w), (y, x) = self.sizes[index], self.origins[index]
        return slice(y, y + h), slice(x, x + w)


@functools.lru_cache(maxsize=256)
def canvas_layout(sizes: Tuple[Tuple[int, int], ...]) -> Optional[CanvasLayout]:
    """The shelf layout of levels ``sizes`` (``(Hi, Wi)``, finest first), or None where there is
    nothing to gain (one level) or it wastes more than :data:`MAX_AREA_RATIO` allows.

    Args:
        sizes (tuple[tuple[int, int], ...]): each level's ``(Hi, Wi)``.

    Returns:
        CanvasLayout | None: the layout.
    """
    if len(sizes) < 2 or any(h < 1 or w < 1 for h, w in sizes):
        return None
    (h0, w0), rest = sizes[0], sizes[1:]
    origins, column = [(0, 0)], 0
    for _, w in rest:
        origins.append((h0 + 1, column))
        column += w + 1
    layout = CanvasLayout(tuple(sizes), tuple(origins), h0 + 1 + max(h for h, _ in rest),
                          max(w0, column - 1))
    if layout.height * layout.width > MAX_AREA_RATIO * sum(h * w for h, w in sizes):
        return None
    return layout


def check_pack_levels(pack_levels: PackLevels) -> PackLevels:
    """``pack_levels`` if it is True, False or ``'auto'``; else RetinaConfigError."""
    if pack_levels is True or pack_levels is False or pack_levels == 'auto':
        return pack_levels
    raise RetinaConfigError(f"pack_levels must be True, False or 'auto', got {pack_levels!r}")


def _plain_conv(conv: nn.Module) -> bool:
    # a 3x3 convolution whose zero padding is 1 cell: what the one-cell gaps stand in for
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.padding_mode == 'zeros')


def packable(stacks: Sequence[Sequence[nn.Module]], predictors: Sequence[nn.Module]) -> bool:
    """Whether a head of ``stacks`` of ConvModules and ``predictors`` convs can run on a
    canvas: plain 3x3 convs, each stacked one followed by ReLU alone (a norm such as GN would
    mix the levels' statistics).

    Args:
        stacks (Sequence[Sequence[nn.Module]]): the subnets' stacked layers.
        predictors (Sequence[nn.Module]): the last conv of each subnet.
    """
    for layer in (m for stack in stacks for m in stack):
        if not (isinstance(layer, ConvModule) and _plain_conv(layer.conv)
                and not layer.with_norm and not layer.with_explicit_padding
                and type(getattr(layer, 'activate', None)) is nn.ReLU
                and tuple(layer.order).index('conv') < tuple(layer.order).index('act')):
            return False
    return all(_plain_conv(m) for m in predictors)


def use_canvas(pack_levels: PackLevels, feats: Sequence[Tensor]) -> Optional[CanvasLayout]:
    """The layout to run ``feats`` on, or None to run them level by level.

    True packs wherever a layout is worth it; ``'auto'`` only CUDA batches of at most
    :data:`AUTO_MAX_CELLS` cells. Never while tracing, exporting or compiling (those graphs
    stay level by level).

    Args:
        pack_levels (bool | str): the head's setting.
        feats (Sequence[Tensor]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
    """
    if pack_levels is False or not feats or torch.jit.is_tracing() or is_compiling() \
            or torch.onnx.is_in_onnx_export():
        return None
    sizes = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in feats)
    if pack_levels == 'auto' and not (
            feats[0].is_cuda and feats[0].shape[0] * sum(h * w for h, w in sizes)
            <= AUTO_MAX_CELLS):
        return None
    return canvas_layout(sizes)


def memory_format(x: Tensor) -> torch.memory_format:
    """Channels-last where ``x`` is laid out so (:func:`is_pixel_major`)."""
    return torch.channels_last if is_pixel_major([x]) else torch.contiguous_format


def pack(feats: Sequence[Tensor], layout: CanvasLayout) -> Tensor:
    """``feats`` ``[(B, C, Hi, Wi)]`` copied into a zero ``(B, C, height, width)`` canvas, in
    the memory format of ``feats[0]``."""
    b, c = feats[0].shape[:2]
    canvas = torch.empty((b, c, layout.height, layout.width), dtype=feats[0].dtype,
                         device=feats[0].device, memory_format=memory_format(feats[0]))
    canvas.zero_()
    for i, feat in enumerate(feats):
        rows, cols = layout.slices(i)
        canvas[:, :, rows, cols] = feat
    return canvas


def unpack(canvas: Tensor, layout: CanvasLayout) -> List[Tensor]:
    """Each level's ``(B, C', Hi, Wi)`` map cut out of a ``(B, C', height, width)`` canvas, as
    its own tensor in the canvas's memory format (what a convolution of the level returns)."""
    fmt = memory_format(canvas)
    return [canvas[(slice(None), slice(None)) + layout.slices(i)].contiguous(memory_format=fmt)
            for i in range(len(layout.sizes))]


@functools.lru_cache(maxsize=64)
def _bounds(layout: CanvasLayout, device: torch.device, dtype: torch.dtype,
            inference: bool) -> Tuple[Tensor, Tensor]:
    # ``inference``: tensors made in inference mode may not be saved for a later backward,
    # so they are cached apart
    upper = torch.zeros((1, 1, layout.height, layout.width), dtype=dtype, device=device)
    for i in range(len(layout.sizes)):
        upper[(0, 0) + layout.slices(i)] = float('inf')
    return torch.zeros((), dtype=dtype, device=device), upper


def relu_inside(x: Tensor, layout: CanvasLayout) -> Tensor:
    """ReLU of the canvas ``x`` ``(B, C, height, width)`` inside the levels and 0 between them,
    in one launch (in place unless autograd records it: its in-place form would save a copy
    of ``x`` for backward)."""
    lower, upper = _bounds(layout, x.device, x.dtype, torch.is_inference_mode_enabled())
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.clamp(x, lower, upper)
    return x.clamp_(lower, upper)


def canvas_forward(stacks: Sequence[Sequence[ConvModule]], predictors: Sequence[nn.Module],
                   feats: Sequence[Tensor], layout: CanvasLayout
                   ) -> Tuple[List[Tensor], ...]:
    """Each subnet (its ``stacks`` of conv + ReLU layers, then its ``predictors`` conv) run
    once on the canvas of ``feats``; the same maps as running it on each level.

    Args:
        stacks (Sequence[Sequence[ConvModule]]): each subnet's stacked layers
            (:func:`packable`).
        predictors (Sequence[nn.Module]): each subnet's last conv.
        feats (Sequence[Tensor]): pyramid maps ``(B, C, Hi, Wi)``, finest first.
        layout (CanvasLayout): their layout.

    Returns:
        tuple[list[Tensor], ...]: per subnet, its ``(B, C', Hi, Wi)`` output on every level.
    """
    canvas = pack(feats, layout)
    outs = []
    for stack, predictor in zip(stacks, predictors):
        feat = canvas
        for layer in stack:
            feat = relu_inside(layer.conv(feat), layout)
        outs.append(unpack(predictor(feat), layout))
    return tuple(outs)
