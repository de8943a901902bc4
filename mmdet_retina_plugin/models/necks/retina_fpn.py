"""Feature pyramid of RetinaNet: P3-P5 from a top-down pathway over C3-C5, P6/P7 by strided convs.

A drop-in for mmdet's ``FPN``: the same constructor arguments with the same defaults and
meaning, and the same module layout (``lateral_convs.i.conv``, ``fpn_convs.i.conv`` with the
extra levels appended to ``fpn_convs``), so configs only change ``type=`` and model-zoo
checkpoints load with ``strict=True``. The paper's names for the RetinaNet options
(``p6_source``, ``relu_before_p7``) are accepted as well.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmdet.utils import OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor

from ...utils.errors import RetinaConfigError
from .retina_fpn_args import resolve_fpn_args


@MODELS.register_module()
class RetinaFPN(BaseModule):
    """Feature Pyramid Network (`arXiv:1612.03144`) with RetinaNet's extra levels
    (`arXiv:1708.02002`); mmdet ``FPN``'s arguments, defaults and results.

    Backbone levels ``start_level .. end_level`` get a 1x1 lateral conv; going top-down, each
    coarser lateral is upsampled (``upsample_cfg``; to the finer lateral's exact size unless a
    ``scale_factor`` is given) and added; a 3x3 conv smooths every merged map. Up to
    ``num_outs`` levels, extra levels follow: with ``add_extra_convs`` False, each one is the
    previous level subsampled by 2 (a 1x1 max pool, as in Faster R-CNN); otherwise each is a 3x3
    stride-2 conv, the first (P6) reading the source the mode names, the others the previous
    extra level, through a ReLU if ``relu_before_extra_convs``.

    Args:
        in_channels (Sequence[int]): channels of each backbone output, e.g.
            ``[256, 512, 1024, 2048]`` for ResNet-50 C2-C5.
        out_channels (int): channels of every pyramid level, ``> 0``.
        num_outs (int): number of pyramid levels returned (backbone levels used + extra
            levels); ``>= len(in_channels) - start_level``, or exactly
            ``end_level - start_level + 1`` when ``end_level`` is not the last level.
        start_level (int): index in ``in_channels`` of the first backbone level used (1 -> C3
            when the backbone returns C2-C5). In ``[0, len(in_channels) - 1]``.
        end_level (int): index of the last backbone level used (inclusive); ``-1`` is the last
            one. Otherwise in ``[start_level, len(in_channels) - 1]``; when it is not the last
            level no extra level is built.
        add_extra_convs (bool | str): how extra levels are made. False: max pooling; True or
            ``'on_input'``: convs, P6 from the last backbone map used (C5: the paper);
            ``'on_lateral'``: P6 from the last merged lateral (before its 3x3 conv);
            ``'on_output'``: P6 from the last output level (P5).
        relu_before_extra_convs (bool): apply a ReLU to each extra level before it feeds the
            next extra conv (paper: True; mmdet's RetinaNet config: False).
        no_norm_on_lateral (bool): build the lateral convs without ``norm_cfg``.
        conv_cfg (dict, optional): conv layer config of every conv (None: ``nn.Conv2d``).
        norm_cfg (dict, optional): norm layer config of every conv (None: no norm, as in the
            paper).
        act_cfg (dict, optional): activation config of every conv (None: linear, as in the
            paper).
        upsample_cfg (dict): ``F.interpolate`` options of the top-down path: ``mode`` (one of
            ``UPSAMPLE_MODES``), optionally ``scale_factor`` (then the upsampled map must come
            out at the finer map's size), ``align_corners``, ``recompute_scale_factor``,
            ``antialias``.
        init_cfg (dict | list[dict], optional): weight init; Xavier-uniform on every conv like
            mmdet's ``FPN``.
        p6_source (str, optional): the paper's name for the extra-conv source: ``'input'``,
            ``'lateral'`` or ``'output'`` (``add_extra_convs='on_input'`` etc.). None: not
            given. ``add_extra_convs=False`` defers to it; other values must match it.
        relu_before_p7 (bool, optional): the paper's name for ``relu_before_extra_convs``.
            None: not given. ``relu_before_extra_convs=False`` defers to it; True with
            ``relu_before_p7=False`` is a contradiction.
        strides (Sequence[int], optional): output stride of each pyramid level; only checked
            (one per output level, doubling from level to level) and exposed as
            ``self.strides``. None: not given.

    Attributes:
        add_extra_convs (bool | str): effective mode, False or one of ``EXTRA_CONV_SOURCES``.
        p6_source (str | None): the same in the paper's terms (None: max-pool levels).
        relu_before_p7 (bool): equal to ``relu_before_extra_convs``, the effective setting.
    """

    def __init__(self,
                 in_channels: Sequence[int] = (256, 512, 1024, 2048),
                 out_channels: int = 256,
                 num_outs: int = 5,
                 start_level: int = 0,
                 end_level: int = -1,
                 add_extra_convs: Union[bool, str] = False,
                 relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 upsample_cfg: Mapping = dict(mode='nearest'),
                 init_cfg: OptMultiConfig = dict(
                     type='Xavier', layer='Conv2d', distribution='uniform'),
                 p6_source: Optional[str] = None,
                 relu_before_p7: Optional[bool] = None,
                 strides: Optional[Sequence[int]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        layout = resolve_fpn_args(in_channels, out_channels, num_outs, start_level, end_level,
                                  add_extra_convs, relu_before_extra_convs, upsample_cfg,
                                  p6_source, relu_before_p7, strides)
        extra_source = layout.extra_source
        self.upsample_cfg = layout.upsample_cfg
        # mmdet FPN's attributes, which configs and tools read
        self.in_channels, self.out_channels = layout.in_channels, out_channels
        self.num_ins, self.num_outs = len(layout.in_channels), num_outs
        self.start_level, self.end_level = start_level, end_level
        self.backbone_end_level = layout.backbone_end_level
        self.add_extra_convs = extra_source
        self.p6_source = extra_source[len('on_'):] if extra_source else None
        self.relu_before_extra_convs = self.relu_before_p7 = layout.relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.strides = layout.strides

        def conv(c_in: int, kernel: int, stride: int = 1, norm: OptConfigType = norm_cfg
                 ) -> ConvModule:
            return ConvModule(c_in, out_channels, kernel, stride=stride, padding=kernel // 2,
                              conv_cfg=conv_cfg, norm_cfg=norm, act_cfg=act_cfg, inplace=False)

        used = layout.in_channels[start_level:layout.backbone_end_level]
        lateral_norm = None if no_norm_on_lateral else norm_cfg
        self.lateral_convs = nn.ModuleList(conv(c, 1, norm=lateral_norm) for c in used)
        self.fpn_convs = nn.ModuleList(conv(out_channels, 3) for _ in used)
        if extra_source:
            for i in range(num_outs - len(used)):
                first_on_input = i == 0 and extra_source == 'on_input'
                self.fpn_convs.append(conv(used[-1] if first_on_input else out_channels, 3,
                                           stride=2))

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        """Builds the pyramid.

        Args:
            inputs (Sequence[Tensor]): backbone maps, ``inputs[i]`` of shape
                ``(B, in_channels[i], Hi, Wi)``.

        Returns:
            tuple[Tensor]: ``num_outs`` maps of shape ``(B, out_channels, H'j, W'j)``, finest
            first; with ``start_level=1`` on a ResNet, strides 8, 16, 32, 64, 128.
        """
        if len(inputs) != self.num_ins:
            raise RetinaConfigError(f'RetinaFPN expects {self.num_ins} input maps (in_channels), '
                                    f'got {len(inputs)}')
        laterals: List[Tensor] = [
            lateral(x) for lateral, x in
            zip(self.lateral_convs, inputs[self.start_level:self.backbone_end_level])
        ]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._upsample(laterals[i], laterals[i - 1])
        outs = [fpn_conv(lat) for fpn_conv, lat in zip(self.fpn_convs, laterals)]
        num_used = len(laterals)
        if self.num_outs > num_used and not self.add_extra_convs:
            for _ in range(self.num_outs - num_used):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif self.num_outs > num_used:
            source = {'on_input': inputs[self.backbone_end_level - 1],
                      'on_lateral': laterals[-1], 'on_output': outs[-1]}[self.add_extra_convs]
            outs.append(self.fpn_convs[num_used](source))
            for extra_conv in self.fpn_convs[num_used + 1:]:
                prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                outs.append(extra_conv(prev))
        return tuple(outs)

    def _upsample(self, coarse: Tensor, fine: Tensor) -> Tensor:
        """``coarse`` upsampled for adding to ``fine``: to ``fine``'s exact size (a plain x2
        breaks on odd sizes) unless ``upsample_cfg`` fixes a ``scale_factor``."""
        if 'scale_factor' in self.upsample_cfg:
            return F.interpolate(coarse, **self.upsample_cfg)
        return F.interpolate(coarse, size=fine.shape[-2:], **self.upsample_cfg)
