from .anchor_cache import AnchorCache

__all__ = ['AnchorCache']
