"""RetinaNetHead as a drop-in for mmdet's RetinaHead: the same constructor arguments with the
same meaning (scoped type names, any sigmoid / box loss incl. GHM, reg_decoded_bbox, norm_cfg,
other box coders, mmdet's defaults) give the same losses, gradients and detections from one
state_dict; what it cannot honour is refused when built."""
import pytest
import torch
from head_pairs import (
    FOCAL,
    METAS,
    C,
    K,
    assert_loss_parity,
    assert_predict_parity,
    build_pair,
    random_gts,
)
from mmdet.models.task_modules.samplers import PseudoSampler
from mmdet.registry import MODELS

import mmdet_retina_plugin  # noqa: F401  (registers our modules)

GHMC = dict(type='GHMC', bins=30, momentum=0.75, use_sigmoid=True, loss_weight=1.0)
GHMR = dict(type='GHMR', mu=0.02, bins=10, momentum=0.7, loss_weight=10.0)
SCOPED_TRAIN = dict(
    assigner=dict(type='mmdet.MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                  min_pos_iou=0, ignore_iof_thr=-1),
    sampler=dict(type='mmdet.PseudoSampler'))


def batch_gts(counts, seed=0):
    return [random_gts(n, m['img_shape'], seed=seed + i)
            for i, (n, m) in enumerate(zip(counts, METAS))]


@pytest.mark.parametrize('assigner,kwargs', [
    # registry-scoped spellings, as other OpenMMLab projects write them
    ('mmdet.MaxIoUAssigner', dict(
        stock_type='mmdet.RetinaHead', train=SCOPED_TRAIN,
        loss_cls=dict(FOCAL, type='mmdet.FocalLoss'),
        loss_bbox=dict(type='mmdet.L1Loss', loss_weight=1.0),
        bbox_coder=dict(type='mmdet.DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                        target_stds=[1.0] * 4))),
    # GHM losses weigh by the statistics of each call: called level by level, as mmdet does
    ('RetinaIoUAssigner', dict(loss_cls=GHMC, loss_bbox=GHMR)),
    ('RetinaIoUAssigner', dict(loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
                               reg_decoded_bbox=True)),
    ('RetinaIoUAssigner', dict(norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))),
    ('RetinaIoUAssigner', dict(bbox_coder=dict(
        type='DeltaXYWHBBoxCoder', target_means=[0.0, 0.0, 0.0, 0.0],
        target_stds=[0.1, 0.1, 0.2, 0.2], clip_border=False))),
    ('RetinaIoUAssigner', dict(bbox_coder=dict(type='TBLRBBoxCoder', normalizer=4.0),
                               loss_bbox=dict(type='SmoothL1Loss', beta=0.11))),
    # our focal loss by its type alone: use_sigmoid comes from the built loss
    ('RetinaIoUAssigner', dict(ours_only=dict(loss_cls=dict(type='RetinaFocalLoss')))),
])
def test_parity_with_retina_head(assigner, kwargs):
    stock, ours = build_pair(assigner, **kwargs)
    # two steps: GHM's moving bin counts must evolve alike
    for step, counts in enumerate([(12, 4), (3, 0)]):
        out = assert_loss_parity(stock, ours, batch_gts(counts, seed=10 * step))
        assert all(torch.isfinite(x) for v in out.values() for x in v)
    assert_predict_parity(stock, ours, rescale=True)


def test_ghm_batched_call_would_differ():
    """One call over the batch would give GHM other bin statistics than mmdet's per-level
    calls: the parity above rests on the per-level path."""
    stock, ours = build_pair('RetinaIoUAssigner', loss_cls=GHMC, loss_bbox=GHMR)
    assert not ours._cls_batched and not ours._box_batched
    ours._cls_batched = True
    with pytest.raises(AssertionError):
        assert_loss_parity(stock, ours, batch_gts((12, 4)))


def test_mmdet_defaults():
    """Built from num_classes / in_channels only, both heads are the same model."""
    stock = MODELS.build(dict(type='RetinaHead', num_classes=K, in_channels=C))
    ours = MODELS.build(dict(type='RetinaNetHead', num_classes=K, in_channels=C))
    assert type(ours.loss_cls) is type(stock.loss_cls) and \
        vars(ours.loss_cls).keys() == vars(stock.loss_cls).keys()
    assert type(ours.loss_bbox) is type(stock.loss_bbox) and \
        ours.loss_bbox.beta == stock.loss_bbox.beta
    assert ours.feat_channels == stock.feat_channels == 256
    assert ours.bbox_coder.clip_border and stock.bbox_coder.clip_border
    assert list(ours.state_dict()) == list(stock.state_dict())


@pytest.mark.parametrize('sampler', [dict(type='mmdet.PseudoSampler'),
                                     dict(type='PseudoSampler'), dict(type=PseudoSampler)])
def test_pseudo_sampler_any_spelling(sampler):
    MODELS.build(dict(type='RetinaNetHead', num_classes=K, in_channels=C, feat_channels=C,
                      train_cfg=dict(SCOPED_TRAIN, sampler=sampler)))


@pytest.mark.parametrize('kwargs,message', [
    (dict(train_cfg=dict(SCOPED_TRAIN, sampler=dict(type='mmdet.RandomSampler', num=256,
                                                    pos_fraction=0.5))),
     'train_cfg.sampler must be None or PseudoSampler'),
    (dict(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False)),
     'loss_cls.use_sigmoid must be True'),
])
def test_refused_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(dict(type='RetinaNetHead', num_classes=K, in_channels=C, feat_channels=C,
                          **kwargs))
