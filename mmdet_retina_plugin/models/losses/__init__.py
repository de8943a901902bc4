from .hard_negative_ce_loss import RetinaHardNegativeCELoss
from .retina_focal_loss import RetinaFocalLoss

__all__ = ['RetinaFocalLoss', 'RetinaHardNegativeCELoss']
