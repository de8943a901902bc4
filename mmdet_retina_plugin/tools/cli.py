"""``mmdet-retina``: insight tools for RetinaNet models.

Subcommands::

    mmdet-retina config [NAME]                                # path of a plugin config
    mmdet-retina coverage ANN.json --config CFG [--out DIR]   # anchor coverage of the gts
    mmdet-retina figures --out DIR                            # paper Figure 1 + prior table
    mmdet-retina infer IMG_OR_DIR --config CFG --checkpoint CKPT --out DIR [--score-thr 0.3]
    mmdet-retina infer IMG_OR_DIR --onnx MODEL.onnx --out DIR       # the same, ONNX Runtime
    mmdet-retina infer IMG_OR_DIR ... --tile H W [--overlap 0.2] [--tile-batch 8]
        [--merge nms|greedy] [--merge-iou-thr T] [--full-image]    # large images, tile by tile
    mmdet-retina export CFG CKPT --out MODEL.onnx [--dynamic] [--no-postprocess] [--input-size H W]

Also runnable as ``python -m mmdet_retina_plugin.tools.cli``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# subcommand -> (module under mmdet_retina_plugin.tools, help); imported only when used
SUBCOMMANDS = {
    'config': ('configs', 'path of a plugin config (lists the names without NAME)'),
    'coverage': ('anchor_coverage', 'share of gt boxes without a regular positive anchor'),
    'figures': ('paper_figures', "the paper's Figure 1 and the prior-initialisation table"),
    'infer': ('infer', 'draw detections of a checkpoint (or an exported .onnx) on images'),
    'export': ('mmdet_retina_plugin.deploy.cli', 'export a RetinaNetHead detector to ONNX'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='mmdet-retina', description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        _tool(module).add_arguments(sub_parser)
    return parser


def _tool(module: str):
    if '.' in module:  # a full module path (the deploy package's command)
        return importlib.import_module(module)
    return importlib.import_module(f'mmdet_retina_plugin.tools.{module}')


def _forget_launcher_requirement() -> None:
    """Drops ``__requires__`` from ``__main__``.

    ``pip install -e .`` under setuptools < 64 (openmim pins 60.2) writes an easy_install
    launcher that sets ``__main__.__requires__``; when mmengine later imports ``pkg_resources``
    (to resolve ``mmdet::`` bases), it re-checks every installed requirement of this package,
    finds torch's ``setuptools>=77`` unmet and raises ``VersionConflict``, so any subcommand
    with a config died. The launcher has already found our entry point; nothing else needs it.
    """
    main_module = sys.modules.get('__main__')
    if main_module is not None and hasattr(main_module, '__requires__'):
        del main_module.__requires__


def main(argv: Optional[List[str]] = None) -> None:
    _forget_launcher_requirement()
    args = build_parser().parse_args(argv)
    import mmdet_retina_plugin  # noqa: F401  (registers our modules for the configs)
    _tool(SUBCOMMANDS[args.command][0]).main(args)


if __name__ == '__main__':
    main()
