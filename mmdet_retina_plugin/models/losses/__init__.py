from .retina_focal_loss import RetinaFocalLoss

__all__ = ['RetinaFocalLoss']
