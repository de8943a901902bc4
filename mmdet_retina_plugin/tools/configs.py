"""Where the plugin's configs are, installed or in a source checkout.

``pip install`` ships the repository's ``configs/`` inside the package as
``mmdet_retina_plugin/.mim/configs`` (as mmdet ships ``mmdet/.mim/configs``); a source checkout
(``pip install -e .``) reads ``configs/`` beside the package. ``mmdet-retina config NAME`` prints
the path of one, e.g. for ``mim train mmdet $(mmdet-retina config retina-plugin_r50_fpn_1x_coco)``;
without NAME it lists them all.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Optional

from ..utils.errors import RetinaConfigError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Installed package data first: an editable install has none and falls through to the checkout.
SEARCH = (PACKAGE_DIR / '.mim' / 'configs', PACKAGE_DIR.parent / 'configs')


def config_root() -> Path:
    """The folder holding the plugin's configs.

    Returns:
        Path: ``mmdet_retina_plugin/.mim/configs`` when installed, else the checkout's
        ``configs/``.

    Raises:
        FileNotFoundError: neither exists (a package built without its configs).
    """
    for root in SEARCH:
        if root.is_dir():
            return root
    raise FileNotFoundError('the plugin configs are missing; looked in '
                            + ', '.join(str(p) for p in SEARCH))


def config_names() -> Dict[str, Path]:
    """Every runnable config (not the ``_base_`` parts) by name.

    Returns:
        Dict[str, Path]: file stem (e.g. ``retina-plugin_r50_fpn_1x_coco``) -> absolute path,
        sorted by name.
    """
    paths = [p for p in config_root().rglob('*.py') if '_base_' not in p.parts]
    return {p.stem: p for p in sorted(paths, key=lambda p: p.stem)}


def config_path(name: str) -> Path:
    """The path of the config ``name``.

    Args:
        name (str): a config's file stem, optionally with ``.py`` or its folder
            (``retinanet/retina-plugin_r50_fpn_1x_coco.py``).

    Returns:
        Path: the config file.

    Raises:
        RetinaConfigError: ``name`` names no config; the message lists the names.
    """
    names = config_names()
    wanted = name if name.endswith('.py') else name + '.py'
    path = names.get(Path(wanted).stem)
    if path is None or not ('/' + path.as_posix()).endswith('/' + wanted):
        raise RetinaConfigError(f'name {name!r} is not one of the plugin configs: '
                                + ', '.join(names))
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('name', nargs='?', default=None,
                        help='config name (file stem); omitted: list every name')


def main(args: argparse.Namespace) -> Optional[Path]:
    if args.name is None:
        for name, path in config_names().items():
            print(f'{name:<56} {path.relative_to(config_root())}')
        return None
    try:
        path = config_path(args.name)
    except ValueError as err:
        # Non-zero exit, so that `mim train mmdet $(mmdet-retina config TYPO)` fails visibly.
        raise SystemExit(str(err)) from None
    print(path)
    return path
