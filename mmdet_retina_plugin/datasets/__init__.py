"""Data sets and pipeline transforms (``import`` registers them in mmdet's registries)."""
from .retina_coco import RetinaCocoDataset
from .retina_tiled_dataset import RetinaTiledDataset
from .transforms import *  # noqa: F401,F403
from .transforms import __all__ as _transforms_all

__all__ = ['RetinaCocoDataset', 'RetinaTiledDataset', *_transforms_all]
