"""RetinaAssignStatsHook: hand-computed assignment counts, and a tiny Runner run that logs them."""
import json
import os.path as osp

import pytest
import torch
from mmdet.registry import HOOKS, MODELS
from mmdet.structures import DetDataSample
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from tiny_detector import tiny_config, tiny_data

import mmdet_retina_plugin  # noqa: F401
from mmdet_retina_plugin.engine.hooks.assign_stats_hook import (
    RetinaAssignStatsHook,
    assignment_stats,
)

# One square anchor of side 4*stride per location, centred on (stride*i, stride*j).
ANCHORS = dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=1, ratios=[1.0],
               strides=[8, 16, 32])


def _head(head_type, assigner_type, allowed_border=-1):
    init_default_scope('mmdet')
    return MODELS.build(dict(
        type=head_type, num_classes=2, in_channels=4, stacked_convs=0, feat_channels=4,
        anchor_generator=ANCHORS,
        train_cfg=dict(assigner=dict(type=assigner_type, pos_iou_thr=0.5, neg_iou_thr=0.4,
                                     min_pos_iou=0.0),
                       allowed_border=allowed_border, pos_weight=-1)))


def _sample(boxes, pad_hw):
    sample = DetDataSample(metainfo=dict(img_shape=pad_hw, pad_shape=pad_hw,
                                         batch_input_shape=(256, 256)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                                       labels=torch.zeros(len(boxes), dtype=torch.long))
    return sample


@pytest.mark.parametrize('head_type,assigner_type', [('RetinaNetHead', 'RetinaIoUAssigner'),
                                                     ('RetinaHead', 'MaxIoUAssigner')])
def test_hand_computed_counts(head_type, assigner_type):
    # Batch input 256x256 -> feature maps 32x32, 16x16, 8x8 (1024, 256, 64 anchors).
    # Image 1 (256x256), two gts (pos_iou_thr 0.5, neg_iou_thr 0.4):
    #  A = [48,48,80,80], the stride-8 anchor at (64,64): IoU 1. Its 4 neighbours shifted by
    #    8 px overlap 24*32 = 768 -> 768/(2048-768) = 0.6 (pos); diagonal ones 24*24 = 576 ->
    #    576/1472 = 0.391 (neg); 16 px away 512/1536 = 1/3 (neg). Other levels: the 64/128 px
    #    anchors containing A give 1024/4096 = 0.25 at most (neg).
    #    -> P3: 5 positives, mean IoU (1 + 4*0.6)/5 = 0.68.
    #  B = [136,128,200,192] (64 px, centre (168,160)), half a stride off the stride-16 grid:
    #    anchors at x = 160, 176 (y = 160) overlap 56*64 = 3584 -> 3584/4608 = 7/9 (pos);
    #    x = 144, 192 overlap 40*64 = 2560 -> 2560/5632 = 0.4545 (ignored);
    #    x = 160, 176 at y = 144, 176 overlap 56*48 = 2688 -> 2688/5504 = 0.4884 (ignored);
    #    all others < 0.4; 32/128 px anchors give <= 0.25.
    #    -> P4: 2 positives (IoU 7/9), 6 ignored.
    # Image 2: no gts, padded to 128x128 inside the 256 batch: only anchors inside its padding
    #    are valid (16x16 + 8x8 + 4x4), all negative.
    head = _head(head_type, assigner_type)
    samples = [_sample([[48, 48, 80, 80], [136, 128, 200, 192]], (256, 256)),
               _sample([], (128, 128))]
    stats = assignment_stats(head, [(32, 32), (16, 16), (8, 8)], samples)
    assert set(stats) == {'P3', 'P4', 'P5', 'all'}
    # counts are per image: (image 1 + image 2) / 2
    assert stats['P3']['pos'] == 5 / 2 and stats['P3']['ignored'] == 0
    assert stats['P3']['neg'] == (1024 - 5 + 256) / 2
    assert stats['P3']['pos_iou'] == pytest.approx(0.68, abs=1e-6)
    assert stats['P4']['pos'] == 2 / 2 and stats['P4']['ignored'] == 6 / 2
    assert stats['P4']['neg'] == (256 - 8 + 64) / 2
    assert stats['P4']['pos_iou'] == pytest.approx(7 / 9, abs=1e-6)
    assert stats['P5'] == dict(pos=0.0, ignored=0.0, neg=(64 + 16) / 2, pos_iou=None)
    assert stats['all']['pos'] == 7 / 2 and stats['all']['ignored'] == 6 / 2
    assert stats['all']['pos_iou'] == pytest.approx((5 * 0.68 + 2 * 7 / 9) / 7, abs=1e-6)


@pytest.mark.parametrize('head_type,assigner_type', [('RetinaNetHead', 'RetinaIoUAssigner'),
                                                     ('RetinaHead', 'MaxIoUAssigner')])
def test_anchors_outside_the_border_are_in_no_count(head_type, assigner_type):
    # The scene of test_hand_computed_counts with allowed_border=0: an anchor of side s
    # centred on (stride*i, stride*j) counts only when stride*i - s/2 >= 0 and
    # stride*i + s/2 < the image side, on both axes.
    #  Image 1 (256): P3 (s 32) i in 2..29 -> 28^2 = 784; P4 (s 64) i in 2..13 -> 144;
    #    P5 (s 128) i in 2..5 -> 16. The positives and ignored anchors of A and B are inside.
    #  Image 2 (128): P3 i in 2..13 -> 144; P4 i in 2..5 -> 16; P5 none.
    head = _head(head_type, assigner_type, allowed_border=0)
    samples = [_sample([[48, 48, 80, 80], [136, 128, 200, 192]], (256, 256)),
               _sample([], (128, 128))]
    stats = assignment_stats(head, [(32, 32), (16, 16), (8, 8)], samples)
    assert stats['P3'] == dict(pos=5 / 2, ignored=0.0, neg=(784 - 5 + 144) / 2,
                               pos_iou=pytest.approx(0.68, abs=1e-6))
    assert stats['P4'] == dict(pos=2 / 2, ignored=6 / 2, neg=(144 - 8 + 16) / 2,
                               pos_iou=pytest.approx(7 / 9, abs=1e-6))
    assert stats['P5'] == dict(pos=0.0, ignored=0.0, neg=16 / 2, pos_iou=None)


def test_invalid_interval():
    with pytest.raises(ValueError, match='interval'):
        RetinaAssignStatsHook(interval=0)


def test_runner_logs_scalars(tmp_path):
    data_root = str(tmp_path / 'data') + '/'
    tiny_data(data_root, 4, 0)
    cfg = tiny_config(data_root)
    for key in ('val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator',
                'val_cfg', 'test_cfg'):
        cfg[key] = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2)
    cfg.param_scheduler = []
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=10 ** 6)
    cfg.custom_hooks = [dict(type='RetinaAssignStatsHook', interval=1)]
    cfg.work_dir = str(tmp_path / 'work')
    # a visualizer of its own: mmengine reuses an instance of the same name, and with it the
    # log folder of an earlier runner in this process
    cfg.visualizer.name = f'assign_stats_{tmp_path.name}'
    runner = Runner.from_cfg(cfg)
    runner.train()

    hook = next(h for h in runner.hooks if isinstance(h, RetinaAssignStatsHook))
    # 64x64 images pad to 64x64: levels 8x8, 4x4, 2x2, 1x1 with 9 anchors each, all counted
    assert sum(hook.last_stats['all'][k] for k in ('pos', 'ignored', 'neg')) == 85 * 9
    assert sum(hook.last_stats[lv]['neg'] + hook.last_stats[lv]['pos']
               + hook.last_stats[lv]['ignored'] for lv in ('P3', 'P4', 'P5', 'P6')) == 85 * 9
    hub = runner.message_hub.log_scalars
    assert 'train/assign/P3_neg' in hub and 'train/assign/all_pos' in hub
    # the LoggerHook forwarded them to the visualizer backend (LocalVisBackend: scalars.json)
    scalars = [json.loads(line) for line in open(
        osp.join(runner.log_dir, 'vis_data', 'scalars.json'))]
    assert all('assign/all_neg' in s for s in scalars)
    assert HOOKS.get('RetinaAssignStatsHook') is RetinaAssignStatsHook
