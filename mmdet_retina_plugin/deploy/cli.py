"""``mmdet-retina export``: a detector checkpoint to one ONNX graph (see :func:`.export_onnx`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='detector config (its bbox_head must be RetinaNetHead)')
    parser.add_argument('checkpoint', help='its weights')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--no-postprocess', action='store_true',
                        help='raw per-level class logits and box deltas, plus the anchors')
    parser.add_argument('--input-size', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='example / fixed input size, multiples of the pad divisor '
                             '(default: the test resize, padded; with --dynamic and a test '
                             'pipeline of no fixed size, about 640 x 640)')
    parser.add_argument('--dynamic', action='store_true',
                        help='free batch size, height and width (multiples of the pad divisor)')
    parser.add_argument('--batch-size', type=int, default=1,
                        help='the fixed batch size without --dynamic')
    parser.add_argument('--dynamo', action='store_true',
                        help="torch.onnx.export's dynamo exporter instead of the TorchScript one")
    parser.add_argument('--no-winograd', action='store_true',
                        help="direct 3x3 convolutions instead of Winograd F(4x4, 3x3)'s (always "
                             "with --dynamo)")


def main(args: argparse.Namespace) -> Path:
    from .export import export_onnx

    out = export_onnx(args.config, args.checkpoint, args.out, opset=args.opset,
                      postprocess=not args.no_postprocess, input_size=args.input_size,
                      dynamic=args.dynamic, batch_size=args.batch_size, dynamo=args.dynamo,
                      winograd=False if args.no_winograd else None)
    print(f'-> {out}')
    return out
