"""Our four modules swapped into mmdet's model zoo: same state_dicts, assignments, losses, steps.

One test per config folder (family) of the installed mmdet (``mmdet/.mim/configs``). Each checks
the family's cheapest config that uses ``FPN``/``FocalLoss``/``MaxIoUAssigner``/``RetinaHead``
and that stock builds: each type swapped alone and all four together, plus one training step with
all swapped against stock. Which families, by ``DROPIN_SCOPE``:

- unset (``make test``): :data:`SUITE_FAMILIES`, one family per distinct use of the four types,
  so the suite stays within its time budget (a family takes 10 to 140 s on 2 cores);
- ``families``: every family;
- ``all``: every config of every family (``make dropin`` runs that sweep with a report).

See :mod:`mmdet_retina_plugin.tools.zoo_sweep` for the criteria and ``docs/dropin.md`` for the
numbers.
"""
import copy
import os
import os.path as osp

import pytest
import torch

from mmdet_retina_plugin.tools.zoo_sweep import (
    SWAPS,
    check_builds,
    compare_assigner,
    compare_loss,
    compare_signatures,
    compare_steps,
    config_root,
    count_types,
    discover,
    family,
    load_config,
    may_use_types,
    neutralise_downloads,
    run_sweep,
    state_signature,
    summarize,
    swap_types,
)

# One family per distinct use, the cheaper ones where several cover it: RetinaHead with focal /
# GHM losses and NAS-FPN, FPN's extra-conv and CARAFE-upsample options, FocalLoss incl.
# `activated` (TOOD), MaxIoUAssigner on predicted boxes (RepPoints), in cascade RPN stages with an
# `iou_calculator` and with `perm_repeat_gt_cfg` (V3Det).
SUITE_FAMILIES = ('carafe', 'cascade_rpn', 'foveabox', 'fsaf', 'ghm', 'nas_fpn', 'paa',
                  'reppoints', 'retinanet', 'tood', 'v3det', 'vfnet')
SCOPE = os.environ.get('DROPIN_SCOPE', 'suite')
EVERYTHING = SCOPE == 'all'
ALL_FAMILIES = sorted({family(p) for p in discover()})
FAMILIES = ALL_FAMILIES if SCOPE in ('families', 'all') else list(SUITE_FAMILIES)


def test_suite_families_exist():
    assert set(SUITE_FAMILIES) <= set(ALL_FAMILIES)

MODEL = dict(
    type='RetinaNet',
    neck=[dict(type='mmdet.FPN', in_channels=[8, 16], out_channels=8, num_outs=3),
          dict(type='PAFPN', in_channels=[8], out_channels=8, num_outs=1)],
    bbox_head=dict(type='RetinaHead', loss_cls=dict(type='FocalLoss', gamma=2.0),
                   init_cfg=dict(type='Normal', std=0.01)),
    backbone=dict(type='ResNet', init_cfg=dict(type='Pretrained', checkpoint='x.pth')),
    train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4)))


def test_swap_renames_only_the_types_and_keeps_their_scope():
    swapped = swap_types(MODEL, tuple(SWAPS))
    assert swapped['neck'][0]['type'] == 'mmdet.RetinaFPN'
    assert swapped['neck'][1]['type'] == 'PAFPN'
    assert swapped['bbox_head']['type'] == 'RetinaNetHead'
    assert swapped['bbox_head']['loss_cls']['type'] == 'RetinaFocalLoss'
    assert swapped['train_cfg']['assigner']['type'] == 'RetinaIoUAssigner'
    back = copy.deepcopy(swapped)
    back['neck'][0]['type'], back['bbox_head']['type'] = 'mmdet.FPN', 'RetinaHead'
    back['bbox_head']['loss_cls']['type'] = 'FocalLoss'
    back['train_cfg']['assigner']['type'] = 'MaxIoUAssigner'
    assert back == MODEL
    only_fpn = swap_types(MODEL, ('FPN',))
    assert count_types(only_fpn) == {'FocalLoss': 1, 'MaxIoUAssigner': 1, 'RetinaHead': 1}
    assert count_types(MODEL) == {'FPN': 1, 'FocalLoss': 1, 'MaxIoUAssigner': 1,
                                  'RetinaHead': 1}


def test_downloads_are_neutralised_and_nothing_else():
    out = neutralise_downloads(MODEL)
    assert out['backbone']['init_cfg'] is None
    assert out['bbox_head']['init_cfg'] == MODEL['bbox_head']['init_cfg']
    out['backbone']['init_cfg'] = MODEL['backbone']['init_cfg']
    assert out == MODEL


def test_distillation_teacher_config_is_inlined_and_swapped():
    # mmdet's LD detectors name the teacher by a config file; its FPN must be swapped too
    entry = load_config('ld/ld_r18-gflv1-r101_fpn_1x_coco.py')
    teacher = entry['model']['teacher_config']
    assert isinstance(teacher, dict) and teacher['model']['neck']['type'] == 'FPN'
    assert entry['types']['FPN'] == 2  # the student's and the teacher's
    swapped = swap_types(entry['model'], ('FPN',))
    assert swapped['teacher_config']['model']['neck']['type'] == 'RetinaFPN'
    assert swapped['neck']['type'] == 'RetinaFPN'


def test_text_prune_keeps_users_of_the_types_and_drops_the_others():
    assert may_use_types('retinanet/retinanet_r50_fpn_1x_coco.py')
    assert may_use_types('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')  # FPN via _base_
    assert not may_use_types('yolox/yolox_s_8xb8-300e_coco.py')
    assert osp.isdir(config_root())


def test_comparators_report_differences():
    """The checks fail when the two sides differ (mmdet's own modules with other settings)."""
    assigner = dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4)
    assert compare_assigner(assigner, assigner) == []
    assert compare_assigner(assigner, dict(assigner, pos_iou_thr=0.6))
    loss = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0)
    assert compare_loss(loss, loss) == []
    assert compare_loss(loss, dict(loss, gamma=1.5))
    sig = {'a': ((2, 3), 'torch.float32'), 'b': ((3,), 'torch.float32')}
    assert compare_signatures(sig, dict(sig)) == []
    assert compare_signatures(sig, {'a': sig['a']})
    assert compare_signatures(sig, {**sig, 'b': ((4,), 'torch.float32')})
    grads = {'w': torch.ones(10), 'v': torch.full((3,), 1e-3)}
    step = ({'loss': 1.0}, grads)
    assert compare_steps(step, copy.deepcopy(step))[0] == []
    assert compare_steps(step, ({'loss': 1.001}, grads))[0]
    assert compare_steps(step, ({'loss': 1.0}, {**grads, 'w': grads['w'] * 1.01}))[0]
    assert compare_steps(step, ({'loss': 1.0}, {'w': grads['w']}))[0]
    assert compare_steps(step, ({'loss': float('nan')}, grads))[0]


def test_a_build_difference_fails_the_swap():
    """A swap whose state_dict differs from stock's is reported (stock FPN with another
    width stands in for a broken twin)."""
    from mmdet_retina_plugin.tools.zoo_sweep import build_model, setup_registries
    setup_registries()
    cfg = dict(type='FPN', in_channels=[8, 16], out_channels=8, num_outs=3)
    stock = state_signature(build_model(cfg))
    assert compare_signatures(stock, state_signature(build_model(dict(cfg, out_channels=4))))
    result = check_builds(dict(type='RetinaNet', backbone=dict(
        type='ResNet', depth=18, base_channels=8, out_indices=(1, 2, 3)),
        neck=dict(type='FPN', in_channels=[16, 32, 64], out_channels=8, num_outs=5),
        bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=8, feat_channels=8,
                       stacked_convs=1, anchor_generator=dict(
                           type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                           ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder')),
        train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4),
                       sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1),
        data_preprocessor=dict(type='DetDataPreprocessor')))
    assert result['stock'] == ''
    assert set(result['swaps']) == {'FPN', 'MaxIoUAssigner', 'RetinaHead', 'all'}


@pytest.mark.parametrize('name', FAMILIES)
def test_family_dropin(name):
    """Ours equals stock in the family's configs (all with ``DROPIN_SCOPE=all``)."""
    paths = [p for p in discover() if family(p) == name]
    sweep = run_sweep(paths, EVERYTHING)
    summary = summarize(sweep)
    if not summary['configs_using_types']:
        unloadable = [f'{u["config"]}: {u["reason"]}' for u in summary['unloadable']]
        pytest.skip(f'none of its {len(paths)} configs uses {"/".join(SWAPS)}'
                    + (f'; cannot load {unloadable}' if unloadable else ''))
    if not summary['counts']['all']['stock_builds']:
        pytest.skip(f'stock builds none of its configs that use the types: '
                    f'{[u["reason"] for u in summary["stock_unbuildable"]][:3]}')
    assert summary['failures'] == [], '\n'.join(
        f'{f["config"]} [{f["swap"]}]: {f["errors"]}' for f in summary['failures'])
    for counts in summary['counts'].values():
        assert counts['passed'] == counts['stock_builds']
    step = summary['steps'][name]
    assert not step['status'].startswith('FAIL'), (step['config'], step['status'],
                                                   step['by_type'])
