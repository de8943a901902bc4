"""Feature pyramid of RetinaNet: P3-P5 from a top-down pathway over C3-C5, P6/P7 by strided convs.

The module layout (``lateral_convs.i.conv``, ``fpn_convs.i.conv`` with the extra levels appended
to ``fpn_convs``) is the one of mmdet's ``FPN``, so its model-zoo checkpoints load with
``strict=True``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmdet.utils import OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor

P6_SOURCES = ('input', 'output', 'lateral')


@MODELS.register_module()
class RetinaFPN(BaseModule):
    """Feature Pyramid Network with RetinaNet's extra levels (`arXiv:1708.02002`).

    Backbone levels ``start_level ..`` get a 1x1 lateral conv; going top-down, each coarser
    lateral is upsampled (nearest, to the finer lateral's exact size, so odd sizes work) and
    added; a 3x3 conv smooths every merged map. ``num_outs - (len(in_channels) - start_level)``
    extra levels follow, each a 3x3 stride-2 conv: the first one (P6) reads ``p6_source``, the
    others read the previous extra level, through a ReLU if ``relu_before_p7``.

    Args:
        in_channels: channels of each backbone output, e.g. ``[256, 512, 1024, 2048]`` for
            ResNet-50 C2-C5.
        out_channels: channels of every pyramid level.
        num_outs: number of pyramid levels returned (backbone levels used + extra levels).
        start_level: index in ``in_channels`` of the first backbone level used (1 -> C3 when
            the backbone returns C2-C5).
        p6_source: input of the P6 conv: ``'input'`` (the last backbone map, C5: paper and
            mmdet's ``add_extra_convs='on_input'``), ``'output'`` (P5 after its 3x3 conv) or
            ``'lateral'`` (P5's merged lateral, before the 3x3 conv).
        relu_before_p7: apply a ReLU to each extra level before it feeds the next one
            (paper: True; mmdet's RetinaNet config: False).
        strides: output stride of each pyramid level; only checked for consistency (one per
            output level, doubling from level to level) and exposed as ``self.strides``.
        conv_cfg: conv layer config of every conv (None: ``nn.Conv2d``).
        norm_cfg: norm layer config of every conv (None: no norm, as in the paper).
        act_cfg: activation config of every conv (None: linear, as in the paper).
        init_cfg: weight init; Xavier-uniform on every conv like mmdet's ``FPN``.
    """

    def __init__(self,
                 in_channels: Sequence[int] = (256, 512, 1024, 2048),
                 out_channels: int = 256,
                 num_outs: int = 5,
                 start_level: int = 1,
                 p6_source: str = 'input',
                 relu_before_p7: bool = False,
                 strides: Optional[Sequence[int]] = (8, 16, 32, 64, 128),
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 init_cfg: OptMultiConfig = dict(
                     type='Xavier', layer='Conv2d', distribution='uniform')) -> None:
        super().__init__(init_cfg=init_cfg)
        in_channels = list(in_channels)
        if not in_channels or any(c <= 0 for c in in_channels):
            raise ValueError(f'in_channels must be a non-empty list of positive ints, '
                             f'got {in_channels}')
        if out_channels <= 0:
            raise ValueError(f'out_channels must be > 0, got {out_channels}')
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f'start_level must be in [0, {len(in_channels) - 1}], '
                             f'got {start_level}')
        num_backbone_outs = len(in_channels) - start_level
        if num_outs < num_backbone_outs:
            raise ValueError(f'num_outs must be >= {num_backbone_outs} (the backbone levels '
                             f'from start_level={start_level}), got {num_outs}')
        if p6_source not in P6_SOURCES:
            raise ValueError(f'p6_source must be one of {P6_SOURCES}, got {p6_source!r}')
        if strides is not None:
            strides = tuple(int(s) for s in strides)
            if len(strides) != num_outs:
                raise ValueError(f'strides has {len(strides)} entries but num_outs={num_outs}'
                                 f' levels are built: give one stride per output level')
            if any(b != 2 * a for a, b in zip(strides, strides[1:])):
                raise ValueError(f'strides must double from level to level (each level is '
                                 f'a x2 top-down / stride-2 step), got {strides}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.p6_source = p6_source
        self.relu_before_p7 = relu_before_p7
        self.strides = strides

        def conv(c_in: int, kernel: int, stride: int = 1) -> ConvModule:
            return ConvModule(c_in, out_channels, kernel, stride=stride, padding=kernel // 2,
                              conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                              inplace=False)

        self.lateral_convs = nn.ModuleList(conv(c, 1) for c in in_channels[start_level:])
        self.fpn_convs = nn.ModuleList(conv(out_channels, 3) for _ in in_channels[start_level:])
        for i in range(num_outs - num_backbone_outs):
            c_in = in_channels[-1] if i == 0 and p6_source == 'input' else out_channels
            self.fpn_convs.append(conv(c_in, 3, stride=2))

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Builds the pyramid.

        Args:
            inputs: backbone maps, ``inputs[i]`` of shape ``(B, in_channels[i], Hi, Wi)``.

        Returns:
            ``num_outs`` maps of shape ``(B, out_channels, H'j, W'j)``, finest first; with
            ``start_level=1`` on a ResNet, strides 8, 16, 32, 64, 128.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'RetinaFPN expects {len(self.in_channels)} input maps '
                             f'(in_channels), got {len(inputs)}')
        laterals: List[Tensor] = [
            lateral(x) for lateral, x in zip(self.lateral_convs, inputs[self.start_level:])
        ]
        for i in range(len(laterals) - 1, 0, -1):
            # upsample to the exact size of the finer map: a plain x2 breaks on odd sizes
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode='nearest')
        outs = [fpn_conv(lat) for fpn_conv, lat in zip(self.fpn_convs, laterals)]
        num_backbone_outs = len(laterals)
        if self.num_outs > num_backbone_outs:
            source = {'input': inputs[-1], 'lateral': laterals[-1],
                      'output': outs[-1]}[self.p6_source]
            outs.append(self.fpn_convs[num_backbone_outs](source))
            for extra_conv in self.fpn_convs[num_backbone_outs + 1:]:
                prev = F.relu(outs[-1]) if self.relu_before_p7 else outs[-1]
                outs.append(extra_conv(prev))
        return tuple(outs)
