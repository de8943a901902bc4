"""Inference APIs: sliced (tiled) inference of large images."""
from .slice_inference import load_image, slice_inference, tile_detector
from .sliced_core import SliceConfig, sliced_predict
from .tile_merge import merge_tile_detections

__all__ = ['SliceConfig', 'load_image', 'merge_tile_detections', 'slice_inference',
           'sliced_predict', 'tile_detector']
