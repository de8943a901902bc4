"""ONNX export of RetinaNet detectors and their ONNX Runtime inference.

Exporting needs the ``deploy`` extra (``pip install .[deploy]``: onnx, onnxruntime, onnxscript)
besides torch and mmdet. Running an exported file needs only numpy, onnxruntime and OpenCV
(:mod:`.runtime`): the exporter's names are imported on first use, so that importing this
package loads no torch.
"""
from typing import Any

from .metadata import METADATA_KEY, read_metadata
from .runtime import OnnxRetinaNet

__all__ = ['METADATA_KEY', 'OnnxRetinaNet', 'RetinaNetGraph', 'export_onnx', 'read_metadata']

_EXPORT_NAMES = frozenset({'RetinaNetGraph', 'export_onnx'})


def __getattr__(name: str) -> Any:
    if name in _EXPORT_NAMES:
        from . import export
        return getattr(export, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
