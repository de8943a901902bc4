"""Bad arguments raise RetinaConfigError, caught as ValueError and as AssertionError alike;
errors about bad data stay plain ValueErrors."""
from typing import Callable

import numpy as np
import pytest
import torch
from mmdet.structures.bbox import HorizontalBoxes

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from mmdet_retina_plugin.apis.tile_merge import check_merge
from mmdet_retina_plugin.datasets import RetinaSanitizeGt
from mmdet_retina_plugin.datasets.synthetic_shapes import make_dataset
from mmdet_retina_plugin.engine.cpu_distributed import CPU_WRAPPER_CFG, cpu_process_group_kwargs
from mmdet_retina_plugin.engine.hooks.atomic_checkpoint_hook import RetinaAtomicCheckpointHook
from mmdet_retina_plugin.engine.hooks.non_finite_guard_hook import RetinaNonFiniteGuardHook
from mmdet_retina_plugin.engine.hooks.precise_bn_hook import RetinaPreciseBNHook
from mmdet_retina_plugin.models.data_preprocessors import RetinaDataPreprocessor
from mmdet_retina_plugin.models.layers.frozen_batch_norm import RetinaFrozenBN
from mmdet_retina_plugin.models.losses import RetinaFocalLoss
from mmdet_retina_plugin.models.losses.hard_negative_ce_loss import RetinaHardNegativeCELoss
from mmdet_retina_plugin.models.necks import RetinaFPN
from mmdet_retina_plugin.models.task_modules.prior_generators.anchor_cache import AnchorCache
from mmdet_retina_plugin.tools.configs import config_path
from mmdet_retina_plugin.tools.coverage_view import ModelView
from mmdet_retina_plugin.tools.infer import run_inference
from mmdet_retina_plugin.utils.errors import RetinaConfigError
from mmdet_retina_plugin.utils.tiling import check_overlap, check_tile

ANCHORS = dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
               ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128])

BAD_ARGUMENTS = {
    'out_channels': lambda: RetinaFPN(in_channels=[8, 16], out_channels=0, num_outs=2),
    'gamma': lambda: RetinaFocalLoss(gamma=-1.0),
    'avg_factor': lambda: RetinaFocalLoss()(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long),
                                            avg_factor=2.0, reduction_override='sum'),
    'neg_pos_ratio': lambda: RetinaHardNegativeCELoss(neg_pos_ratio=0),
    'eps': lambda: RetinaFrozenBN(8, eps=0.0),
    'test_channels_last': lambda: RetinaDataPreprocessor(test_channels_last='yes'),
    'max_entries': lambda: AnchorCache(None, max_entries=0),
    'interval': lambda: RetinaAtomicCheckpointHook(interval=0),
    'action': lambda: RetinaNonFiniteGuardHook(action='ignore'),
    'num_iters': lambda: RetinaPreciseBNHook(num_iters=0),
    'launcher': lambda: cpu_process_group_kwargs('slurm', dict(backend='gloo'), CPU_WRAPPER_CFG),
    'min_size': lambda: RetinaSanitizeGt(min_size=-1),
    'num_train': lambda: make_dataset(root='unused', num_train=-1),
    'tile': lambda: check_tile(0),
    'overlap': lambda: check_overlap(1.5),
    'merge': lambda: check_merge('average', 'iou', []),
    'name': lambda: config_path('no-such-config'),
    'score_thr': lambda: run_inference('unused', None, None, 'unused', score_thr=2.0),
    'pos_iou_thr': lambda: ModelView(anchor_generator=ANCHORS, pos_iou_thr=1.5),
}


@pytest.mark.parametrize('field', sorted(BAD_ARGUMENTS))
def test_bad_argument_is_both_error_types(field: str) -> None:
    call: Callable = BAD_ARGUMENTS[field]
    with pytest.raises(AssertionError, match=field):
        call()
    with pytest.raises(ValueError, match=field) as info:
        call()
    assert type(info.value) is RetinaConfigError


def test_bad_data_stays_a_value_error() -> None:
    """NaN box coordinates are the data's fault, not a setting's."""
    results = dict(img=np.zeros((40, 50, 3), np.uint8), img_shape=(40, 50), img_id=7,
                   img_path='x/7.png',
                   gt_bboxes=HorizontalBoxes(torch.tensor([[1.0, 2.0, float('nan'), 9.0]])),
                   gt_bboxes_labels=np.zeros(1, np.int64), gt_ignore_flags=np.zeros(1, bool))
    with pytest.raises(ValueError, match='NaN/Inf') as info:
        RetinaSanitizeGt()(results)
    assert not isinstance(info.value, AssertionError)
