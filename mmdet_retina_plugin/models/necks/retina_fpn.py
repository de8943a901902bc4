"""Feature pyramid of RetinaNet: P3-P5 from a top-down pathway over C3-C5, P6/P7 by strided convs.

A drop-in for mmdet's ``FPN``: the same constructor arguments with the same defaults and
meaning, and the same module layout (``lateral_convs.i.conv``, ``fpn_convs.i.conv`` with the
extra levels appended to ``fpn_convs``), so configs only change ``type=`` and model-zoo
checkpoints load with ``strict=True``. The paper's names for the RetinaNet options
(``p6_source``, ``relu_before_p7``) are accepted as well.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmdet.utils import OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor

from ...utils.errors import RetinaConfigError

P6_SOURCES = ('input', 'output', 'lateral')
EXTRA_CONV_SOURCES = ('on_input', 'on_lateral', 'on_output')
UPSAMPLE_MODES = ('nearest', 'nearest-exact', 'bilinear', 'bicubic', 'area')
# F.interpolate's keywords other than the input and ``size`` (which the top-down path sets).
UPSAMPLE_KEYS = ('mode', 'scale_factor', 'align_corners', 'recompute_scale_factor', 'antialias')


def _extra_conv_source(add_extra_convs: Union[bool, str], p6_source: Optional[str]
                       ) -> Union[bool, str]:
    """mmdet's ``add_extra_convs`` (False or an ``'on_*'`` source) from either spelling.

    Args:
        add_extra_convs (bool | str): mmdet's spelling; False (its default) defers to
            ``p6_source``.
        p6_source (str, optional): the paper-named spelling, None when not given.

    Returns:
        bool | str: False (extra levels by max pooling) or one of ``EXTRA_CONV_SOURCES``.
    """
    if not (isinstance(add_extra_convs, bool) or add_extra_convs in EXTRA_CONV_SOURCES):
        raise RetinaConfigError(f'add_extra_convs must be a bool or one of {EXTRA_CONV_SOURCES}, '
                                f'got {add_extra_convs!r}')
    source = 'on_input' if add_extra_convs is True else add_extra_convs
    if p6_source is None:
        return source
    if p6_source not in P6_SOURCES:
        raise RetinaConfigError(f'p6_source must be None or one of {P6_SOURCES}, got {p6_source!r}')
    if source is not False and source != f'on_{p6_source}':
        raise RetinaConfigError(f'p6_source={p6_source!r} contradicts add_extra_convs='
                                f'{add_extra_convs!r}: give one of them, or matching values '
                                f"(p6_source='input' is add_extra_convs='on_input')")
    return f'on_{p6_source}'


def _check_upsample_cfg(upsample_cfg: Mapping) -> Dict:
    """A copy of ``upsample_cfg`` after checking it holds valid ``F.interpolate`` options."""
    if not isinstance(upsample_cfg, Mapping):
        raise RetinaConfigError(f'upsample_cfg must be a dict of F.interpolate options, '
                                f'got {upsample_cfg!r}')
    unknown = set(upsample_cfg) - set(UPSAMPLE_KEYS)
    if unknown:
        raise RetinaConfigError(f'upsample_cfg keys must be among {UPSAMPLE_KEYS}, got '
                                f'{sorted(unknown)}')
    mode = upsample_cfg.get('mode', 'nearest')
    if mode not in UPSAMPLE_MODES:
        raise RetinaConfigError(f'upsample_cfg mode must be one of {UPSAMPLE_MODES}, got {mode!r}')
    if upsample_cfg.get('align_corners') is not None and mode not in ('bilinear', 'bicubic'):
        raise RetinaConfigError(f"upsample_cfg align_corners needs mode 'bilinear' or 'bicubic', "
                                f'got mode {mode!r}')
    scale = upsample_cfg.get('scale_factor')
    if scale is not None and any(s <= 0 for s in (scale if isinstance(scale, Sequence)
                                                  else (scale, ))):
        raise RetinaConfigError(f'upsample_cfg scale_factor must be > 0, got {scale!r}')
    return dict(upsample_cfg)


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
        in_channels = list(in_channels)
        if not in_channels or any(c <= 0 for c in in_channels):
            raise RetinaConfigError(f'in_channels must be a non-empty list of positive ints, '
                                    f'got {in_channels}')
        if out_channels <= 0:
            raise RetinaConfigError(f'out_channels must be > 0, got {out_channels}')
        num_ins = len(in_channels)
        if not 0 <= start_level < num_ins:
            raise RetinaConfigError(f'start_level must be in [0, {num_ins - 1}], got {start_level}')
        if end_level in (-1, num_ins - 1):
            backbone_end_level = num_ins
            if num_outs < num_ins - start_level:
                raise RetinaConfigError(
                    f'num_outs must be >= {num_ins - start_level} (the backbone '
                    f'levels from start_level={start_level}), got {num_outs}')
        elif start_level <= end_level < num_ins:
            backbone_end_level = end_level + 1
            if num_outs != end_level - start_level + 1:
                raise RetinaConfigError(
                    f'num_outs must be {end_level - start_level + 1} (levels '
                    f'start_level={start_level}..end_level={end_level}; no extra '
                    f'levels unless end_level is the last), got {num_outs}')
        else:
            raise RetinaConfigError(f'end_level must be -1 or in [start_level={start_level}, '
                                    f'{num_ins - 1}], got {end_level}')
        extra_source = _extra_conv_source(add_extra_convs, p6_source)
        if relu_before_p7 is not None and relu_before_extra_convs and not relu_before_p7:
            raise RetinaConfigError(
                'relu_before_p7=False contradicts relu_before_extra_convs=True: '
                'give one of them, or matching values')
        relu = bool(relu_before_extra_convs or relu_before_p7)
        self.upsample_cfg = _check_upsample_cfg(upsample_cfg)
        if strides is not None:
            strides = tuple(int(s) for s in strides)
            if len(strides) != num_outs:
                raise RetinaConfigError(
                    f'strides has {len(strides)} entries but num_outs={num_outs}'
                    f' levels are built: give one stride per output level')
            if any(b != 2 * a for a, b in zip(strides, strides[1:])):
                raise RetinaConfigError(f'strides must double from level to level (each level is '
                                        f'a x2 top-down / stride-2 step), got {strides}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_ins = num_ins
        self.num_outs = num_outs
        self.start_level = start_level
        self.end_level = end_level
        self.backbone_end_level = backbone_end_level
        self.add_extra_convs = extra_source
        self.p6_source = extra_source[len('on_'):] if extra_source else None
        self.relu_before_extra_convs = self.relu_before_p7 = relu
        self.no_norm_on_lateral = no_norm_on_lateral
        self.strides = strides

        def conv(c_in: int, kernel: int, stride: int = 1, norm: OptConfigType = norm_cfg
                 ) -> ConvModule:
            return ConvModule(c_in, out_channels, kernel, stride=stride, padding=kernel // 2,
                              conv_cfg=conv_cfg, norm_cfg=norm, act_cfg=act_cfg, inplace=False)

        used = in_channels[start_level:backbone_end_level]
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
