from .batched_iou import box_areas, pairwise_overlaps
from .retina_iou_assigner import BatchAssignResult, RetinaIoUAssigner

__all__ = ['BatchAssignResult', 'RetinaIoUAssigner', 'box_areas', 'pairwise_overlaps']
