from .batched_nms import batched_nms_batch

__all__ = ['batched_nms_batch']
