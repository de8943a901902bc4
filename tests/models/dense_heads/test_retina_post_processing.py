"""Post-processing on fixed shapes: detections equal to mmdet's RetinaHead, with the levels
ranked one by one (the CPU's path) and together (a GPU's), for the configs that change the
shapes (nms_pre <= 0 or above a level's size, score_thr 0, no candidate at all); the op budget
of the candidate selection; and the parsed test_cfg."""
from collections import Counter

import pytest
import torch
from head_pairs import (
    METAS,
    TEST_CFG,
    assert_predict_parity,
    assert_same_detections,
    build_pair,
    random_maps,
)
from mmengine.config import ConfigDict
from torch.profiler import ProfilerActivity, profile

from mmdet_retina_plugin.models.dense_heads import retina_pair_selection as pairs
from mmdet_retina_plugin.models.dense_heads import retina_post_processing as post
from mmdet_retina_plugin.models.dense_heads.retina_post_settings import PostProcessSettings
from mmdet_retina_plugin.utils.errors import RetinaConfigError


@pytest.fixture
def levels_together(monkeypatch):
    """Ranks all levels at once (``block_topk``) on the CPU too, as on a GPU."""
    monkeypatch.setattr(pairs, 'ranks_levels_together', lambda rows, k: True)


_TOGETHER_TESTS = [
    dict(),  # nms_pre 1000: P3 is shorter than 1000 blocks
    dict(nms_pre=300),
    dict(nms_pre=2000, max_per_img=None),  # above every level's size
    dict(nms_pre=300, score_thr=-1.0, max_per_img=50),  # the padding must not pass
]


@pytest.mark.parametrize('test, channels_last, with_nms', [
    (test, channels_last, with_nms) for test in _TOGETHER_TESTS
    for channels_last in (False, True) for with_nms in (True, False)
    # left out: these maps hold two exactly tied scores there, whose order without NMS is
    # mmdet's unstable sort's (the level-by-level path differs there too)
    if not (test.get('nms_pre') == 2000 and channels_last and not with_nms)])
def test_levels_ranked_together_give_stocks_detections(levels_together, test, channels_last,
                                                       with_nms):
    stock, ours = build_pair(test=test)
    assert_predict_parity(stock, ours, rescale=True, channels_last=channels_last,
                          with_nms=with_nms)


_VIEWS = {'aten::' + name for name in (
    'alias as_strided detach detach_ empty expand expand_as flatten lift_fresh permute reshape '
    'select slice split squeeze t transpose unbind unflatten unsqueeze view _unsafe_view').split()}


def _kernel_ops(fn):
    """The ATen ops ``fn`` issues from Python, less views (on a GPU: launches, at least)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = Counter()
    for event in prof.events():
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith('aten::'):
            parent = parent.cpu_parent
        if event.name.startswith('aten::') and parent is None and event.name not in _VIEWS:
            counts[event.name] += 1
    return counts


@pytest.mark.parametrize('together', [False, True], ids=['level-by-level', 'levels-together'])
def test_candidate_selection_op_budget(monkeypatch, together):
    # steps 1 to 4 for the batch: ranking the levels together takes two topk calls, level by
    # level two per level with blocks (P3-P5 here) and one without (P6, P7)
    monkeypatch.setattr(pairs, 'ranks_levels_together', lambda rows, k: together)
    _, ours = build_pair(test=dict(nms_pre=100))
    cls, box = random_maps()
    anchors, _ = ours.anchor_cache.anchors([c.shape[-2:] for c in cls], cls[0].device,
                                           cls[0].dtype)
    settings = PostProcessSettings.from_cfg(ours.test_cfg)
    img_hw = torch.tensor([m['img_shape'] for m in METAS])
    select = lambda: post.select_candidates(  # noqa: E731
        cls, box, anchors, ours.cls_out_channels, ours.bbox_coder, settings, 100, img_hw)
    select()  # the level constants are cached from here on
    ops = _kernel_ops(select)
    assert ops['aten::topk'] == (2 if together else 7), ops
    assert sum(ops.values()) <= (70 if together else 90), ops


def test_levels_ranked_together_compile_whole(levels_together):
    # the compiled inference region of compile_cfg: no graph break, the eager candidates
    _, ours = build_pair()
    cls, box = random_maps()
    anchors, _ = ours.anchor_cache.anchors([c.shape[-2:] for c in cls], cls[0].device,
                                           cls[0].dtype)
    settings = PostProcessSettings.from_cfg(ours.test_cfg)
    img_hw = torch.tensor([m['img_shape'] for m in METAS])

    def select(cls, box):
        return post.select_candidates(cls, box, anchors, ours.cls_out_channels,
                                      ours.bbox_coder, settings, settings.nms_pre, img_hw)

    expected = select(cls, box)
    got = torch.compile(select, fullgraph=True, backend='eager')(cls, box)
    for e, o in zip(expected, got):
        assert torch.equal(e, o)


@pytest.mark.parametrize('test', [
    dict(nms_pre=2000),  # above the size of the two coarsest levels
    dict(nms_pre=300, score_thr=0.0, max_per_img=50),
])
@pytest.mark.parametrize('with_nms', [True, False])
def test_predict_parity_shape_configs(test, with_nms):
    stock, ours = build_pair(test=test)
    assert_predict_parity(stock, ours, rescale=True, with_nms=with_nms)


@pytest.mark.parametrize('with_nms', [True, False])
def test_nms_pre_minus_one_keeps_every_pair_above_score_thr(with_nms):
    # sized by a host read of the candidate counts. mmdet's filter_scores_and_topk takes
    # `[:min(nms_pre, n)]`, i.e. `[:-1]`, and so drops each level's lowest candidate; a limit
    # above every level is its meaning of "no limit"
    stock, ours = build_pair()
    cfg = ConfigDict(TEST_CFG, score_thr=0.6)
    cls, box = random_maps()
    kwargs = dict(batch_img_metas=METAS, rescale=True, with_nms=with_nms)
    expected = stock.predict_by_feat(cls, box, cfg=ConfigDict(cfg, nms_pre=10 ** 9), **kwargs)
    got = ours.predict_by_feat(cls, box, cfg=ConfigDict(cfg, nms_pre=-1), **kwargs)
    dropped = stock.predict_by_feat(cls, box, cfg=ConfigDict(cfg, nms_pre=-1), **kwargs)
    if not with_nms:  # the stock slice really drops candidates
        assert all(len(d) < len(e) for d, e in zip(dropped, expected))
    assert_same_detections(expected, got)


@pytest.mark.parametrize('with_nms', [True, False])
def test_no_candidate_gives_empty_results(with_nms):
    stock, ours = build_pair(test=dict(score_thr=0.9999))
    cls, box = random_maps()
    kwargs = dict(batch_img_metas=METAS, rescale=True, with_nms=with_nms)
    expected = stock.predict_by_feat(cls, box, **kwargs)
    got = ours.predict_by_feat(cls, box, **kwargs)
    assert [len(r) for r in expected] == [len(r) for r in got] == [0, 0]
    for r in got:
        assert r.bboxes.shape == (0, 4) and r.scores.shape == (0,) and r.labels.shape == (0,)


def test_settings_defaults_are_mmdets():
    settings = PostProcessSettings.from_cfg(dict(nms=dict(type='nms', iou_threshold=0.6)))
    assert settings == PostProcessSettings(score_thr=0.0, nms_pre=-1, min_bbox_size=-1.0,
                                           nms=dict(type='nms', iou_threshold=0.6),
                                           max_per_img=None)
    assert PostProcessSettings.from_cfg(None).nms is None


@pytest.mark.parametrize('change, message', [
    (dict(score_thr='0.05'), 'test_cfg.score_thr must be a number'),
    (dict(nms_pre=1000.0), 'test_cfg.nms_pre must be an int'),
    (dict(min_bbox_size=None), 'test_cfg.min_bbox_size must be a number'),
    (dict(max_per_img=True), 'test_cfg.max_per_img must be an int'),
    (dict(nms=0.5), 'test_cfg.nms must be an mmcv batched_nms config'),
    (dict(nms=dict(type='nms', iou_threshold=1.5)), r'test_cfg.nms.iou_threshold .* \[0, 1\]'),
    (dict(nms=dict(type='nms')), 'test_cfg.nms.iou_threshold'),
])
def test_bad_test_cfg_fails_at_build_naming_the_field(change, message):
    with pytest.raises(RetinaConfigError, match=message):
        build_pair(test=change)


def test_nms_without_nms_cfg_names_the_field():
    _, ours = build_pair()
    cls, box = random_maps()
    cfg = ConfigDict(TEST_CFG)
    cfg.pop('nms')
    with pytest.raises(RetinaConfigError, match='test_cfg.nms is required'):
        ours.predict_by_feat(cls, box, batch_img_metas=METAS, cfg=cfg)
    # without NMS it is not needed
    assert len(ours.predict_by_feat(cls, box, batch_img_metas=METAS, cfg=cfg,
                                    with_nms=False)) == 2
