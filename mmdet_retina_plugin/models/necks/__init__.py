from .retina_fpn import RetinaFPN

__all__ = ['RetinaFPN']
