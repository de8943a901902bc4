"""ONNX export of RetinaNet detectors and their ONNX Runtime inference.

Needs the ``deploy`` extra (``pip install .[deploy]``: onnx, onnxruntime, onnxscript).
"""
from .export import METADATA_KEY, RetinaNetGraph, export_onnx, read_metadata
from .runtime import OnnxRetinaNet

__all__ = ['METADATA_KEY', 'OnnxRetinaNet', 'RetinaNetGraph', 'export_onnx', 'read_metadata']
