from .batched_iou import box_areas, pairwise_overlaps
from .batched_max_iou import BatchAssignResult, assign_batched
from .max_iou_rule import MaxIoURule, max_iou_assign
from .retina_iou_assigner import RetinaIoUAssigner

__all__ = ['BatchAssignResult', 'MaxIoURule', 'RetinaIoUAssigner', 'assign_batched',
           'box_areas', 'max_iou_assign', 'pairwise_overlaps']
