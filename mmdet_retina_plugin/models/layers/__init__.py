from .batched_nms import batched_nms_padded
from .frozen_batch_norm import RetinaFrozenBN
from .frozen_bn_folding import fold_frozen_bn

__all__ = ['RetinaFrozenBN', 'batched_nms_padded', 'fold_frozen_bn']
