from .batched_nms import batched_nms_padded
from .frozen_batch_norm import RetinaFrozenBN

__all__ = ['RetinaFrozenBN', 'batched_nms_padded']
