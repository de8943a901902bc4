"""RetinaNetHead against mmdet's RetinaHead on the same maps: losses, gradients, targets,
detections; plus init, parameter names, validation and the anchor cache."""
import copy
import math

import pytest
import torch
from head_pairs import (
    FOCAL,
    METAS,
    TRAIN_CFG,
    C,
    K,
    assert_loss_parity,
    assert_predict_parity,
    build_pair,
    leaf,
    random_gts,
    random_maps,
)
from mmdet.models.task_modules.prior_generators import AnchorGenerator
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.structures import InstanceData
from tiny_detector import tiny_config

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from mmdet_retina_plugin.models.task_modules.prior_generators import AnchorCache

register_all_modules()


@pytest.mark.parametrize('assigner', ['MaxIoUAssigner', 'RetinaIoUAssigner'])
@pytest.mark.parametrize('counts', [(8, 3), (0, 1), (100, 0)])
def test_loss_parity(assigner, counts):
    stock, ours = build_pair(assigner)
    gts = [random_gts(n, m['img_shape'], seed=i) for i, (n, m) in enumerate(zip(counts, METAS))]
    assert_loss_parity(stock, ours, gts)


@pytest.mark.parametrize('head,train', [
    (dict(loss_bbox=dict(type='SmoothL1Loss', beta=0.11, loss_weight=1.0)), None),
    (dict(loss_bbox=dict(type='GIoULoss', loss_weight=2.0), reg_decoded_bbox=True), None),
    (dict(), dict(allowed_border=0, pos_weight=2.0)),
])
def test_loss_parity_variants(head, train):
    stock, ours = build_pair('RetinaIoUAssigner', train=train, **head)
    gts = [random_gts(n, m['img_shape'], seed=i) for i, (n, m) in enumerate(zip((20, 5), METAS))]
    assert_loss_parity(stock, ours, gts)


@pytest.mark.parametrize('assigner', ['MaxIoUAssigner', 'RetinaIoUAssigner'])
def test_loss_parity_with_ignored_boxes(assigner):
    train = dict(assigner=dict(TRAIN_CFG['assigner'], ignore_iof_thr=0.5))
    stock, ours = build_pair(assigner, train=train)
    gts = [random_gts(n, m['img_shape'], seed=i) for i, (n, m) in enumerate(zip((6, 4), METAS))]
    ignores = [random_gts(3, METAS[0]['img_shape'], seed=7), InstanceData(
        bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))]
    assert_loss_parity(stock, ours, gts, ignores)


def test_avg_factor_momentum_divides_by_moving_average():
    """Step t's losses equal mmdet's times count_t / ema_t, with ema_1 = count_1 and
    ema_t = m * ema_(t-1) + (1 - m) * count_t; eval mode reads the average but keeps it."""
    stock, ours = build_pair(ours_only=dict(avg_factor_momentum=0.75))
    assert ours.avg_factor_ema.item() == 0 and 'avg_factor_ema' in ours.state_dict()
    cls, box = random_maps()
    sizes = [c.shape[-2:] for c in cls]
    anchors, valid = stock.get_anchors(sizes, METAS, device='cpu')
    ema = None
    for step, counts in enumerate([(8, 3), (0, 1), (30, 12)]):
        gts = [random_gts(n, m['img_shape'], seed=10 * step + i)
               for i, (n, m) in enumerate(zip(counts, METAS))]
        s = stock.loss_by_feat(cls, box, gts, METAS)
        count = float(stock.get_targets(anchors, valid, gts, METAS)[-1])  # mmdet's avg_factor
        ema = count if ema is None else 0.75 * ema + 0.25 * count
        o = ours.loss_by_feat(leaf(cls), leaf(box), gts, METAS)
        for k in ('loss_cls', 'loss_bbox'):
            torch.testing.assert_close(o[k], [v * count / ema for v in s[k]], rtol=1e-5,
                                       atol=1e-7)
        assert ours.avg_factor_ema.item() == pytest.approx(ema)
    ours.eval()
    ours.loss_by_feat(cls, box, gts, METAS)
    assert ours.avg_factor_ema.item() == pytest.approx(ema)  # eval leaves the average alone
    assert 'avg_factor_ema' not in build_pair()[1].state_dict()  # off: mmdet's keys only


def test_targets_match_mmdet():
    stock, ours = build_pair('RetinaIoUAssigner')
    gts = [random_gts(n, m['img_shape'], seed=i) for i, (n, m) in enumerate(zip((12, 7), METAS))]
    cls, _ = random_maps()
    sizes = [c.shape[-2:] for c in cls]
    anchor_list, flag_list = stock.get_anchors(sizes, METAS, device='cpu')
    labels, label_weights, _, _, avg_factor = stock.get_targets(
        anchor_list, flag_list, gts, METAS)
    anchors, _ = ours.anchor_cache.anchors(sizes, torch.device('cpu'), torch.float32)
    valid = ours.anchor_cache.valid_flags(sizes, [m['pad_shape'] for m in METAS], 'cpu')
    t = ours.get_batch_targets(anchors, valid, gts, METAS)
    assert torch.equal(t.labels, torch.cat(labels, 1))
    assert torch.equal(t.label_weights, torch.cat(label_weights, 1))
    assert t.avg_factor.item() == avg_factor
    assert (t.gt_inds[~valid] == -1).all()


@pytest.mark.parametrize('rescale,with_nms,test', [
    (True, True, None), (False, True, dict(nms_pre=50, max_per_img=20)),
    (True, False, dict(score_thr=0.2, min_bbox_size=8)),
    # mmcv's per-class path (> split_thr boxes) and class-agnostic NMS: still one batched call
    (True, True, dict(nms=dict(type='nms', iou_threshold=0.6, split_thr=50))),
    (False, True, dict(nms=dict(type='nms', iou_threshold=0.5, class_agnostic=True))),
    # soft-NMS: the image-by-image fallback through mmcv
    (True, True, dict(nms=dict(type='soft_nms', iou_threshold=0.5, min_score=0.05)))])
def test_predict_parity(rescale, with_nms, test):
    stock, ours = build_pair(test=test)
    assert_predict_parity(stock, ours, rescale=rescale, with_nms=with_nms)


@pytest.mark.parametrize('test', [None, dict(nms_pre=50, max_per_img=20)])
def test_predict_parity_channels_last_maps(test):
    # RetinaDataPreprocessor's test batches make the head's outputs channels-last
    stock, ours = build_pair(test=test)
    assert_predict_parity(stock, ours, rescale=True, channels_last=True)


def test_param_names_equal_mmdet():
    norm = dict(type='GN', num_groups=4)
    stock, ours = build_pair(norm_cfg=norm)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in stock.state_dict().items()}
    assert 'cls_convs.1.gn.weight' in ours.state_dict()


def test_forward_equals_mmdet():
    stock, ours = build_pair(norm_cfg=dict(type='GN', num_groups=4))
    feats = [torch.randn(2, C, s, s) for s in (16, 8, 4, 2, 1)]
    for a, b in zip(sum(stock(feats), []), sum(ours(feats), [])):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_init_prior_bias_and_normal_convs():
    head = MODELS.build(dict(type='RetinaNetHead', num_classes=K, in_channels=64,
                             feat_channels=64, prior_prob=0.02))
    head.init_weights()
    torch.testing.assert_close(head.retina_cls.bias,
                               torch.full_like(head.retina_cls.bias, -math.log(0.98 / 0.02)))
    w = head.cls_convs[0].conv.weight  # 36864 samples: std within ~2% of 0.01
    assert abs(w.std().item() - 0.01) < 5e-4 and abs(w.mean().item()) < 5e-4
    assert torch.count_nonzero(head.retina_reg.bias) == 0
    assert torch.count_nonzero(head.cls_convs[0].conv.bias) == 0


@pytest.mark.parametrize('stacked_convs', [0, 2])
def test_seeded_init_equals_mmdet(stacked_convs):
    """Same seed, same initial weights as RetinaHead: a seeded run starts where stock's does."""
    common = dict(num_classes=K, in_channels=C, feat_channels=C, stacked_convs=stacked_convs,
                  norm_cfg=dict(type='GN', num_groups=4), loss_cls=FOCAL)
    heads = []
    for head_type in ('RetinaHead', 'RetinaNetHead'):
        torch.manual_seed(3)
        head = MODELS.build(dict(type=head_type, **common))
        head.init_weights()
        heads.append(head.state_dict())
    assert list(heads[0]) == list(heads[1])
    for name, stock_value in heads[0].items():
        torch.testing.assert_close(heads[1][name], stock_value, rtol=0, atol=0, msg=name)


def test_user_init_cfg_applies_on_top():
    head = MODELS.build(dict(type='RetinaNetHead', num_classes=K, in_channels=C,
                             feat_channels=C, init_cfg=dict(type='Constant', val=0.5,
                                                            layer='Conv2d')))
    head.init_weights()
    assert (head.retina_cls.weight == 0.5).all()


@pytest.mark.parametrize('kwargs,field', [
    (dict(prior_prob=0.0), 'prior_prob'), (dict(prior_prob=1.0), 'prior_prob'),
    (dict(avg_factor_momentum=1.0), 'avg_factor_momentum'),
    (dict(avg_factor_momentum=-0.1), 'avg_factor_momentum'),
    (dict(stacked_convs=-1), 'stacked_convs'), (dict(num_classes=0), 'num_classes'),
    (dict(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False)), 'use_sigmoid'),
    (dict(train_cfg=dict(TRAIN_CFG, sampler=dict(type='RandomSampler', num=256,
                                                   pos_fraction=0.5))), 'sampler'),
])
def test_invalid_args(kwargs, field):
    args = dict(type='RetinaNetHead', num_classes=K, in_channels=C, feat_channels=C)
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        MODELS.build(args)


def test_level_count_mismatch():
    _, ours = build_pair()
    cls, box = random_maps()
    with pytest.raises(ValueError, match='strides'):
        ours.loss_by_feat(cls[:4], box[:4], [random_gts(1, (100, 100), 0)] * 2, METAS)


def test_anchor_cache_matches_generator_and_reuses():
    gen = AnchorGenerator(strides=[8, 16], ratios=[0.5, 1.0, 2.0], octave_base_scale=4,
                          scales_per_octave=3)
    cache = AnchorCache(gen, max_entries=2)
    sizes = [(12, 10), (6, 5)]
    flat, levels = cache.anchors(sizes, torch.device('cpu'), torch.float32)
    for got, exp in zip(levels, gen.grid_priors(sizes, device='cpu')):
        assert torch.equal(got, exp)
    assert cache.anchors(sizes, torch.device('cpu'), torch.float32)[0] is flat
    pads = [(96, 80), (64, 48)]
    flags = cache.valid_flags(sizes, pads, 'cpu')
    for got, pad in zip(flags, pads):
        assert torch.equal(got, torch.cat(gen.valid_flags(sizes, pad, 'cpu')))
    assert not flags[1].all() and flags[0].all()
    cache.anchors([(4, 4), (2, 2)], torch.device('cpu'), torch.float32)
    cache.anchors([(5, 5), (3, 3)], torch.device('cpu'), torch.float32)  # evicts `sizes`
    assert cache.anchors(sizes, torch.device('cpu'), torch.float32)[0] is not flat


def test_stock_state_dict_loads_strict_with_moving_average():
    """mmdet's RetinaHead / RetinaNet checkpoints have no ``avg_factor_ema``: they load with
    strict=True into a head with the option on, which then starts the average afresh."""
    stock, ours = build_pair(ours_only=dict(avg_factor_momentum=0.9))
    ours.avg_factor_ema.fill_(37.0)
    ours.load_state_dict(stock.state_dict(), strict=True)
    assert ours.avg_factor_ema.item() == 0  # not started: the next count starts it
    gts = [random_gts(n, m['img_shape'], seed=i) for i, (n, m) in enumerate(zip((8, 3), METAS))]
    assert_loss_parity(stock, ours, gts)  # first step after loading: mmdet's normaliser
    # a whole stock detector into ours with the option on
    model = tiny_config().model
    stock_cfg = copy.deepcopy(model)
    stock_cfg.bbox_head.type = 'RetinaHead'
    stock_cfg.bbox_head.pop('prior_prob', None)
    model.bbox_head.avg_factor_momentum = 0.9
    ours_model = MODELS.build(model)
    ours_model.load_state_dict(MODELS.build(stock_cfg).state_dict(), strict=True)
    assert ours_model.bbox_head.avg_factor_ema.item() == 0
    # and back: a checkpoint with the average loads into a head without the option
    _, plain = build_pair()
    plain.load_state_dict(ours.state_dict(), strict=True)


def test_resume_continues_moving_average():
    """The average is checkpointed: a head loaded from step 1's state_dict computes step 2's
    average from it, as the head that kept training does."""
    m = 0.75
    _, first = build_pair(ours_only=dict(avg_factor_momentum=m))
    _, resumed = build_pair(ours_only=dict(avg_factor_momentum=m))
    steps = [[random_gts(n, meta['img_shape'], seed=10 * s + i)
              for i, (n, meta) in enumerate(zip(counts, METAS))]
             for s, counts in enumerate([(8, 3), (30, 12)])]
    cls, box = random_maps()
    first.loss_by_feat(cls, box, steps[0], METAS)
    count_1 = first.avg_factor_ema.item()
    assert count_1 >= 2  # started from the first count
    resumed.load_state_dict(first.state_dict(), strict=True)
    expected = first.loss_by_feat(cls, box, steps[1], METAS)
    got = resumed.loss_by_feat(cls, box, steps[1], METAS)
    assert resumed.avg_factor_ema.item() == first.avg_factor_ema.item() != count_1
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)
