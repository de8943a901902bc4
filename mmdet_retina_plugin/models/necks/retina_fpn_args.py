"""RetinaFPN's arguments: mmdet ``FPN``'s (and the paper's spellings) checked and resolved into
the levels and the extra-level mode they mean, or a ``RetinaConfigError`` naming the field.

Kept apart from ``retina_fpn.py`` so that the pyramid itself reads on its own.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

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


class FpnLayout(NamedTuple):
    """What :func:`resolve_fpn_args` resolved.

    Attributes:
        in_channels (List[int]): channels of each backbone output.
        backbone_end_level (int): one past the last backbone level used.
        extra_source (bool | str): False (extra levels by max pooling) or one of
            ``EXTRA_CONV_SOURCES``, the input of the first extra conv.
        relu_before_extra_convs (bool): a ReLU before every extra conv after the first.
        upsample_cfg (Dict): checked ``F.interpolate`` options of the top-down path.
        strides (Tuple[int, ...] | None): the output strides, when given.
    """

    in_channels: List[int]
    backbone_end_level: int
    extra_source: Union[bool, str]
    relu_before_extra_convs: bool
    upsample_cfg: Dict
    strides: Optional[Tuple[int, ...]]


def resolve_fpn_args(in_channels: Sequence[int], out_channels: int, num_outs: int,
                     start_level: int, end_level: int, add_extra_convs: Union[bool, str],
                     relu_before_extra_convs: bool, upsample_cfg: Mapping,
                     p6_source: Optional[str], relu_before_p7: Optional[bool],
                     strides: Optional[Sequence[int]]) -> FpnLayout:
    """Checks ``RetinaFPN``'s arguments (see its docstring for each) and resolves them.

    Raises:
        RetinaConfigError: an argument is out of range or contradicts another one.
    """
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
    if strides is not None:
        strides = tuple(int(s) for s in strides)
        if len(strides) != num_outs:
            raise RetinaConfigError(
                f'strides has {len(strides)} entries but num_outs={num_outs}'
                f' levels are built: give one stride per output level')
        if any(b != 2 * a for a, b in zip(strides, strides[1:])):
            raise RetinaConfigError(f'strides must double from level to level (each level is '
                                    f'a x2 top-down / stride-2 step), got {strides}')
    return FpnLayout(in_channels, backbone_end_level, extra_source, relu,
                     _check_upsample_cfg(upsample_cfg), strides)
