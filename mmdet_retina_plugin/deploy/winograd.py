"""Winograd F(4x4, 3x3) convolution for the exported graph.

A 3x3, stride-1 convolution computes each 4x4 block of outputs from a 6x6 input tile. Winograd's
minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
turns that into 36 independent ``(O, C) @ (C, tiles)`` products of transformed weights and
transformed tiles: 36 multiply-adds per 16 outputs per channel pair instead of 9 * 16 = 144, a
quarter of the direct convolution's arithmetic. The input and output transforms are small
integer matrices (additions), which cost memory traffic, not arithmetic. RetinaNet's head (its
ten 3x3 convolutions over 256 channels, shared by the levels) holds over half of the
detector's FLOPs. ONNX Runtime's CPU convolutions are direct, and gain from this where both
channel counts are large; with few channels (or the box output's 36) the transforms' memory
traffic outweighs the saved arithmetic (measured per channel count in docs/deploy.md). Hence
the threshold on both channel counts (:func:`is_winograd_eligible`).

Results differ from the direct convolution by rounding only: the transforms' constants (up to 8,
and 1/24 in the weight transform, computed in float64) leave a relative error around 1e-5 in
float32. The weights are transformed once, at export.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# Lavin & Gray's F(4x4, 3x3) with interpolation points 0, +-1, +-2 and infinity:
# Y = A^T [(G g G^T) * (B^T d B)] A for a 6x6 input tile d and a 3x3 filter g (a correlation,
# as torch's conv2d).
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))
_TILE = 4  # outputs per tile side; a tile reads _TILE + 2 inputs per side


MIN_CHANNELS = 192


def is_winograd_eligible(module: nn.Module, min_channels: int = MIN_CHANNELS) -> bool:
    """Whether ``module`` is a plain 3x3 convolution :class:`WinogradConv2d` can replace.

    Plain: ``nn.Conv2d`` itself or mmcv's ``Conv2d`` wrapper (subclasses with another forward,
    such as weight standardisation or adaptive padding, are not), stride 1, dilation 1, one
    group, zero padding equal on both sides, and at least ``min_channels`` input and output
    channels (below that the transforms' memory traffic outweighs the saved arithmetic).
    """
    from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d

    return (type(module) in (nn.Conv2d, MMCVConv2d)
            and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == 'zeros' and isinstance(module.padding, tuple)
            and module.padding[0] == module.padding[1]
            and min(module.in_channels, module.out_channels) >= min_channels)


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1 ``nn.Conv2d`` computed with Winograd F(4x4, 3x3).

    Args:
        conv (nn.Conv2d): the convolution to replace (see :func:`is_winograd_eligible`); its
            weights are copied and transformed, later changes to it are not seen.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_winograd_eligible(conv, min_channels=1):
            raise ValueError(f'conv must be a plain 3x3 stride-1 dilation-1 ungrouped Conv2d '
                             f'with zero padding, got {conv}')
        weight = conv.weight.detach().to(torch.float64)  # (O, C, 3, 3)
        g = torch.tensor(_G, dtype=torch.float64)
        # (36, 1, O, C): index (row point, column point), the order of the input transform
        transformed = torch.einsum('ak,ockl,bl->aboc', g, weight, g)
        self.register_buffer('weight', transformed.reshape(
            36, 1, conv.out_channels, conv.in_channels).to(conv.weight.dtype))
        bias = conv.bias.detach().view(1, -1, 1, 1) if conv.bias is not None else None
        self.register_buffer('bias', bias)
        self.register_buffer('bt', torch.tensor(_BT, dtype=conv.weight.dtype))
        self.register_buffer('at', torch.tensor(_AT, dtype=conv.weight.dtype))
        self.padding = conv.padding[0]

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x (Tensor): ``(B, C, H, W)``.

        Returns:
            Tensor: ``(B, O, H + 2p - 2, W + 2p - 2)``, p the convolution's padding.
        """
        height, width = x.shape[-2:]
        out_h, out_w = height + 2 * self.padding - 2, width + 2 * self.padding - 2
        tiles_h, tiles_w = (out_h + _TILE - 1) // _TILE, (out_w + _TILE - 1) // _TILE
        # zero padding of the convolution, plus whatever completes the last tiles
        x = F.pad(x, (self.padding, _TILE * tiles_w + 2 - width - self.padding,
                      self.padding, _TILE * tiles_h + 2 - height - self.padding))
        tiles = self._transform_input(x, tiles_h, tiles_w)  # (36, B, C, T)
        products = torch.matmul(self.weight, tiles)  # (36, B, O, T)
        out = self._transform_output(products, tiles_h, tiles_w)[:, :, :out_h, :out_w]
        return out if self.bias is None else out + self.bias

    def _transform_input(self, x: Tensor, tiles_h: int, tiles_w: int) -> Tensor:
        """B^T d B of every overlapping 6x6 tile (stride 4) of the padded ``x``: ``(36, B, C,
        tiles_h * tiles_w)``, index 0 = row point * 6 + column point.

        Columns first: the strided slices along the innermost axis (slow) then read the input
        once, and the ones along rows (contiguous runs) read the 6 transformed columns."""
        batch, channels = x.shape[:2]
        span_h, span_w = _TILE * tiles_h, _TILE * tiles_w
        cols = torch.stack([x[..., j:j + span_w:_TILE] for j in range(6)])  # (6, B, C, H, tw)
        cols = torch.matmul(self.bt, cols.reshape(6, -1)).reshape(6, batch, channels, -1,
                                                                  tiles_w)
        rows = torch.stack([cols[:, :, :, i:i + span_h:_TILE] for i in range(6)])  # (6, 6, ...)
        rows = torch.matmul(self.bt, rows.reshape(6, -1))
        return rows.reshape(36, batch, channels, tiles_h * tiles_w)

    def _transform_output(self, products: Tensor, tiles_h: int, tiles_w: int) -> Tensor:
        """A^T m A per tile, tiles laid back out: ``(B, O, 4 * tiles_h, 4 * tiles_w)``."""
        _, batch, out_channels, _ = products.shape
        cols = torch.matmul(self.at, products.reshape(6, 6, -1))  # (6 row, 4 col, N)
        out = torch.matmul(self.at, cols.reshape(6, -1))  # (4 row, 4 col * N)
        # (B, O * 16, th, tw), channel o * 16 + row * 4 + col: pixel_shuffle's order (ONNX
        # DepthToSpace), much faster in ONNX Runtime than the equivalent 6-d transpose
        out = out.reshape(_TILE * _TILE, batch, out_channels, tiles_h, tiles_w)
        out = out.permute(1, 2, 0, 3, 4).reshape(batch, out_channels * _TILE * _TILE, tiles_h,
                                                 tiles_w)
        return F.pixel_shuffle(out, _TILE)


def winograd_convs(module: nn.Module, min_channels: int = MIN_CHANNELS) -> Tuple[str, ...]:
    """Replaces, in place, every eligible 3x3 convolution under ``module`` (itself excluded) by
    a :class:`WinogradConv2d` of the same weights.

    Args:
        module (nn.Module): e.g. a detector's neck or head, in eval mode.
        min_channels (int): the least input and output channels a replaced convolution has.

    Returns:
        tuple[str]: the replaced submodules' names.
    """
    replaced = []
    for name, child in list(module.named_modules()):
        for attr, sub in list(child.named_children()):
            if is_winograd_eligible(sub, min_channels):
                setattr(child, attr, WinogradConv2d(sub))
                replaced.append(f'{name}.{attr}' if name else attr)
    return tuple(replaced)
