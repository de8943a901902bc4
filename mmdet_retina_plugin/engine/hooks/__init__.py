from .assign_stats_hook import RetinaAssignStatsHook
from .atomic_checkpoint_hook import RetinaAtomicCheckpointHook
from .channels_last_hook import RetinaChannelsLastHook
from .compile_hook import RetinaCompileHook
from .fold_frozen_bn_hook import RetinaFoldFrozenBNHook
from .non_finite_guard_hook import RetinaNonFiniteGuardHook
from .precise_bn_hook import RetinaPreciseBNHook

__all__ = ['RetinaAssignStatsHook', 'RetinaAtomicCheckpointHook', 'RetinaChannelsLastHook',
           'RetinaCompileHook', 'RetinaFoldFrozenBNHook', 'RetinaNonFiniteGuardHook',
           'RetinaPreciseBNHook']
