"""Post-processing on fixed shapes: the block top-k, detections equal to mmdet's RetinaHead
for the configs that change the shapes (nms_pre <= 0 or above a level's size, score_thr 0, no
candidate at all), and the parsed test_cfg."""
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

from mmdet_retina_plugin.models.dense_heads import retina_post_processing as post
from mmdet_retina_plugin.models.dense_heads.retina_post_settings import PostProcessSettings
from mmdet_retina_plugin.utils.errors import RetinaConfigError


@pytest.mark.parametrize('num,k', [
    (64 * 500 + 37, 100),  # block path, with a tail that fills no block
    (64 * 500, 7),  # block path, no tail
    (1000, 300),  # too few blocks: plain topk
    (50, 80),  # k above the row: all of it
])
def test_topk_rows_equals_topk(num, k):
    g = torch.Generator().manual_seed(num + k)
    logits = torch.randn(3, num, generator=g)
    logits[1, -5:] = 10.0 + torch.arange(5.0)  # the best entries of a row in its tail
    values, cols = post.topk_rows(logits, k)
    ref_values, ref_cols = logits.topk(min(k, num), dim=1)
    assert values.shape == (3, min(k, num))
    assert torch.equal(values, ref_values)
    assert torch.equal(cols, ref_cols)  # no ties in random floats


def test_topk_rows_reads_a_strided_view():
    # channels-last logits are read as a (B, N) view whose rows are not adjacent
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 64 * 300, 3, generator=g)
    logits = base[..., 1]
    values, cols = post.topk_rows(logits, 50)
    assert torch.equal(values, logits.topk(50, dim=1).values)
    assert torch.equal(logits.gather(1, cols), values)


def test_topk_rows_zero():
    values, cols = post.topk_rows(torch.randn(2, 64 * 100), 0)
    assert values.shape == cols.shape == (2, 0)


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
