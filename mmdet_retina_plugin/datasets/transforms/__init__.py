from .retina_sanitize_gt import RetinaSanitizeGt

__all__ = ['RetinaSanitizeGt']
