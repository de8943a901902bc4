from .assign_stats_hook import RetinaAssignStatsHook
from .atomic_checkpoint_hook import RetinaAtomicCheckpointHook
from .non_finite_guard_hook import RetinaNonFiniteGuardHook
from .precise_bn_hook import RetinaPreciseBNHook

__all__ = ['RetinaAssignStatsHook', 'RetinaAtomicCheckpointHook', 'RetinaNonFiniteGuardHook',
           'RetinaPreciseBNHook']
