from .retina_net_head import RetinaNetHead

__all__ = ['RetinaNetHead']
