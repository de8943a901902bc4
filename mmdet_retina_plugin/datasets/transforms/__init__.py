from .retina_crop_tile import RetinaCropTile
from .retina_sanitize_gt import RetinaSanitizeGt

__all__ = ['RetinaCropTile', 'RetinaSanitizeGt']
