"""RetinaIoUAssigner: the single-image rule (``max_iou_assign``) bitwise equal to mmdet's
MaxIoUAssigner, the batched/chunked path equal to that rule image by image, every option
(custom IoU calculators, gpu_assign_thr, perm_repeat_gt_cfg included) equal to mmdet,
hand-computed tie-breaking, random scenes (hypothesis), argument validation and registry build."""
import copy
import os
from typing import Dict

import mmdet
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdet.models.task_modules import AssignResult, MaxIoUAssigner
from mmdet.models.task_modules.assigners.max_iou_assigner import perm_repeat_bboxes
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.config import Config
from mmengine.structures import InstanceData

import mmdet_retina_plugin  # noqa: F401  (registers RetinaIoUAssigner)
from mmdet_retina_plugin.models.task_modules.assigners import (
    BatchAssignResult,
    MaxIoURule,
    RetinaIoUAssigner,
    max_iou_assign,
    pairwise_overlaps,
)
from mmdet_retina_plugin.models.task_modules.assigners.perm_repeat import jitter_repeated_boxes

NUM_PRIORS = 240
# Each config is one mmdet MaxIoUAssigner setting that takes a distinct code path.
CONFIGS = {
    'default': dict(),
    'neg_pair': dict(neg_iou_thr=(0.1, 0.4)),
    'min_pos_iou': dict(min_pos_iou=0.3),
    'first_max_only': dict(gt_max_assign_all=False),
    'no_low_quality': dict(match_low_quality=False),
    'ignore_wrt_priors': dict(ignore_iof_thr=0.5),
    'ignore_wrt_ignore_boxes': dict(ignore_iof_thr=0.5, ignore_wrt_candidates=False),
    'pos_0.7_neg_0.3': dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3),
}
FP16 = dict(type='BboxOverlaps2D', scale=16., dtype='fp16')
# Options that take the per-image calculator path or jitter gts, alone and with others.
OPTION_CONFIGS = {
    'default_calculator_spelled': dict(iou_calculator=dict(type='BboxOverlaps2D')),
    'fp16': dict(iou_calculator=FP16),
    'fp16_no_scale_ignore': dict(iou_calculator=dict(type='BboxOverlaps2D', dtype='fp16'),
                                 ignore_iof_thr=0.5),
    'fp16_ignore_wrt_ignore_boxes_first_max': dict(
        iou_calculator=FP16, ignore_iof_thr=0.3, ignore_wrt_candidates=False,
        gt_max_assign_all=False),
    'glip_calculator': dict(iou_calculator=dict(type='BboxOverlaps2D_GLIP'), min_pos_iou=0.2),
    'gpu_assign_thr': dict(gpu_assign_thr=4, ignore_iof_thr=0.5),
    'perm_repeat_v3det': dict(perm_repeat_gt_cfg=dict(iou_thr=0.7, perm_range=0.01)),
    'perm_repeat_redraws_fp16': dict(perm_repeat_gt_cfg=dict(iou_thr=0.999, perm_range=0.05),
                                     iou_calculator=FP16, gpu_assign_thr=3,
                                     match_low_quality=False),
}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _boxes(n: int, gen: torch.Generator, extent: float = 64.0, max_wh: float = 40.0
           ) -> torch.Tensor:
    """(n, 4) integer-valued x1y1x2y2 boxes: integer coordinates make exact IoU ties common."""
    xy = torch.rand(n, 2, generator=gen) * extent
    wh = torch.rand(n, 2, generator=gen) * max_wh + 1
    return torch.cat([xy, xy + wh], dim=1).round()


def _scene(num_gts: int, seed: int):
    """Priors (with duplicates), gts (with duplicates, a prior copy and an isolated gt whose
    best IoU is 0), labels and ignore boxes."""
    gen = torch.Generator().manual_seed(seed)
    priors = _boxes(NUM_PRIORS - 40, gen)
    priors = torch.cat([priors, priors[:40]])  # duplicate priors: ties for a gt's best prior
    gts = _boxes(num_gts, gen)
    if num_gts >= 5:
        gts[num_gts // 2] = gts[1]  # duplicate gts: ties for a prior's best gt
        gts[3] = priors[7]  # IoU exactly 1
        gts[4] = torch.tensor([500., 500., 510., 510.])  # overlaps no prior (mmdet quirk)
    labels = torch.randint(0, 5, (num_gts,), generator=gen)
    ignore = _boxes(3, gen)
    return priors, gts, labels, ignore


def _mmdet_kwargs(cfg: Dict) -> Dict:
    kwargs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4)
    kwargs.update(cfg)
    return kwargs


def _assign_mmdet(cfg: Dict, priors, gts, labels, ignore=None) -> AssignResult:
    ign = None if ignore is None else InstanceData(bboxes=ignore)
    return MaxIoUAssigner(**_mmdet_kwargs(cfg)).assign(
        InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels), ign)


def _rule(cfg: Dict) -> MaxIoURule:
    """The rule of one of ``CONFIGS`` (mmdet's argument names)."""
    kwargs = _mmdet_kwargs(cfg)
    neg = kwargs.pop('neg_iou_thr')
    return MaxIoURule(neg_range=neg if isinstance(neg, tuple) else (0.0, neg), **kwargs)


def _assign_reference(cfg: Dict, priors, gts, labels, ignore=None) -> BatchAssignResult:
    """The oracle: the plain single-image rule with mmdet's ``bbox_overlaps``."""
    return BatchAssignResult(*max_iou_assign(_rule(cfg), priors, gts, labels, ignore))


def _assert_same(ours, ref) -> None:
    assert torch.equal(ours.gt_inds, ref.gt_inds)
    assert ours.gt_inds.dtype == ref.gt_inds.dtype
    assert ours.max_overlaps.dtype == ref.max_overlaps.dtype
    assert torch.equal(ours.max_overlaps, ref.max_overlaps)  # bitwise
    assert torch.equal(ours.labels, ref.labels)


@pytest.mark.parametrize('num_gts', [0, 1, 8, 100])
@pytest.mark.parametrize('cfg_name', list(CONFIGS))
def test_reference_and_assign_match_mmdet(num_gts: int, cfg_name: str) -> None:
    """The oracle, and ``assign`` (which runs it), bitwise equal to mmdet's MaxIoUAssigner,
    with and without ignore regions."""
    cfg = CONFIGS[cfg_name]
    for seed in range(2):
        priors, gts, labels, ignore = _scene(num_gts, seed)
        for ign in (None, ignore):
            ref = _assign_mmdet(cfg, priors, gts, labels, ign)
            _assert_same(_assign_reference(cfg, priors, gts, labels, ign), ref)
            ours = RetinaIoUAssigner(**_mmdet_kwargs(cfg)).assign(
                InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels),
                None if ign is None else InstanceData(bboxes=ign))
            assert isinstance(ours, AssignResult)
            assert ours.num_gts == ref.num_gts
            _assert_same(ours, ref)


def test_scene_exercises_ties_and_quirk() -> None:
    """Guards the parity test's coverage: the scene really has the cases it claims."""
    priors, gts, labels, _ = _scene(100, 0)
    ref = _assign_mmdet({}, priors, gts, labels)
    overlaps = bbox_overlaps(gts, priors)
    best_per_gt = overlaps.max(dim=1).values
    ties_per_gt = (overlaps == best_per_gt[:, None]).sum(dim=1)
    assert (ties_per_gt[best_per_gt > 0] > 1).any()  # a gt with several best priors
    # The isolated gt 4 (best IoU 0) claims priors through the zero-IoU quirk.
    assert best_per_gt[4] == 0
    assert (ref.gt_inds == 5).any()


@pytest.mark.parametrize('cfg_name', ['default', 'first_max_only'])
def test_empty_priors(cfg_name: str) -> None:
    _, gts, labels, _ = _scene(8, 0)
    priors = torch.zeros(0, 4)
    ref = _assign_mmdet(CONFIGS[cfg_name], priors, gts, labels)
    ours = RetinaIoUAssigner(**_mmdet_kwargs(CONFIGS[cfg_name])).assign(
        InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels))
    assert ours.gt_inds.shape == (0, )
    _assert_same(ours, ref)


def test_hand_computed_tie_breaking() -> None:
    """Hand-worked: later gt wins a shared best prior; first gt wins a positive tie."""
    priors = torch.tensor([[0., 0., 10., 10.],  # p0
                           [0., 0., 10., 10.],  # p1: duplicate of p0
                           [0., 0., 10., 20.],  # p2
                           [100., 100., 110., 110.]])  # p3: overlaps nothing
    gts = torch.tensor([[0., 0., 10., 20.],  # g0: IoU 0.5 with p0/p1, 1 with p2
                        [0., 0., 10., 10.],  # g1: IoU 1 with p0/p1, 0.5 with p2
                        [0., 0., 10., 10.]])  # g2: duplicate of g1
    labels = torch.tensor([7, 8, 9])
    res = RetinaIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(
        InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels))
    # p0/p1: best gt is g1 (first of the g1/g2 tie) in step 3, but g2 (the later one) claims
    # them in step 4. p2: g0. p3: IoU 0 -> background.
    assert res.gt_inds.tolist() == [3, 3, 1, 0]
    assert res.labels.tolist() == [9, 9, 7, -1]
    assert res.max_overlaps.tolist() == [1.0, 1.0, 1.0, 0.0]
    # gt_max_assign_all=False: g1/g2 claim only the first best prior p0; p1 keeps step 3 (g1).
    res = RetinaIoUAssigner(gt_max_assign_all=False).assign(
        InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels))
    assert res.gt_inds.tolist() == [3, 2, 1, 0]


def test_zero_iou_quirk_hand_computed() -> None:
    """mmdet quirk kept for parity: with min_pos_iou=0 a gt overlapping no prior makes every
    prior with IoU 0 against it positive; min_pos_iou > 0 disables that."""
    priors = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
    gts = torch.tensor([[0., 0., 10., 10.], [50., 50., 60., 60.]])
    labels = torch.tensor([1, 2])
    data = (InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels))
    assert RetinaIoUAssigner(min_pos_iou=0.0).assign(*data).gt_inds.tolist() == [2, 2]
    assert RetinaIoUAssigner(min_pos_iou=0.1).assign(*data).gt_inds.tolist() == [1, 0]


def _padded_batch(num_gts_per_img, seed: int):
    """A padded batch over shared priors with per-image gts, ignore boxes and prior masks."""
    gen = torch.Generator().manual_seed(seed)
    priors = _scene(0, seed)[0]
    num_imgs, max_gts = len(num_gts_per_img), max(num_gts_per_img)
    gt_bboxes = torch.full((num_imgs, max_gts, 4), 3.0)  # padding overlaps priors on purpose
    gt_labels = torch.full((num_imgs, max_gts), 99)
    gt_valid = torch.zeros(num_imgs, max_gts, dtype=torch.bool)
    gt_bboxes[..., 2:] = 30.0
    for i, n in enumerate(num_gts_per_img):
        _, gts, labels, _ = _scene(n, seed + 10 + i)
        slots = torch.randperm(max_gts, generator=gen)[:n].sort().values  # padding anywhere
        gt_bboxes[i, slots], gt_labels[i, slots], gt_valid[i, slots] = gts, labels, True
    ignore = _boxes(3, gen).expand(num_imgs, -1, -1).clone()
    ignore_valid = torch.rand(num_imgs, 3, generator=gen) > 0.4
    prior_valid = torch.rand(num_imgs, priors.size(0), generator=gen) > 0.3
    return priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore, ignore_valid


def _mmdet_on_image(cfg, priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore,
                    ignore_valid, assign=_assign_mmdet) -> BatchAssignResult:
    """mmdet (or ``assign``) on the image's valid gts and valid priors, scattered back to all
    priors; removed priors get the documented (-1, 0, -1)."""
    ref = assign(cfg, priors[prior_valid], gt_bboxes[gt_valid], gt_labels[gt_valid],
                 ignore[ignore_valid])
    # gt index k in the compacted gts -> its slot in the padded row.
    slot_of = torch.cat([torch.zeros(1, dtype=torch.long),
                         gt_valid.nonzero()[:, 0] + 1])
    gt_inds = torch.full((priors.size(0), ), -1)
    gt_inds[prior_valid] = torch.where(ref.gt_inds > 0, slot_of[ref.gt_inds.clamp(min=0)],
                                       ref.gt_inds)
    max_overlaps = ref.max_overlaps.new_zeros(priors.size(0))
    max_overlaps[prior_valid] = ref.max_overlaps
    labels = torch.full((priors.size(0), ), -1)
    labels[prior_valid] = ref.labels
    return BatchAssignResult(gt_inds, max_overlaps, labels)


def _reference_on_image(cfg, *image) -> BatchAssignResult:
    """The oracle on one image of a padded batch (see :func:`_mmdet_on_image`)."""
    return _mmdet_on_image(cfg, *image, assign=_assign_reference)


@pytest.mark.parametrize('cfg_name', list(CONFIGS))
def test_assign_batch_matches_reference(cfg_name: str) -> None:
    """The batched path, in one chunk and in several, equals the single-image rule."""
    cfg = CONFIGS[cfg_name]
    batch = _padded_batch([8, 0, 30, 1], seed=3)
    priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore, ignore_valid = batch
    # (4 images x 30 gts) x ~60 priors per chunk -> 4 chunks; one chunk for the default.
    for chunk_numel in (None, 4 * 30 * 60):
        ours = RetinaIoUAssigner(**_mmdet_kwargs(cfg), chunk_numel=chunk_numel).assign_batch(
            priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore, ignore_valid)
        assert isinstance(ours, BatchAssignResult)
        assert ours.gt_inds.shape == (4, priors.size(0))
        for i in range(4):
            ref = _reference_on_image(cfg, priors, *(t[i] for t in batch[1:]))
            _assert_same(BatchAssignResult(*(t[i] for t in ours)), ref)


def test_assign_batch_defaults_and_no_gts() -> None:
    """prior_valid / ignore omitted == all valid / none; a zero-width gt dimension works."""
    priors, gt_bboxes, gt_labels, gt_valid, *_ = _padded_batch([5, 2], seed=4)
    assigner = RetinaIoUAssigner()
    ours = assigner.assign_batch(priors, gt_bboxes, gt_labels, gt_valid)
    full = torch.ones(2, priors.size(0), dtype=torch.bool)
    for i in range(2):
        ref = _reference_on_image({}, priors, gt_bboxes[i], gt_labels[i], gt_valid[i], full[i],
                                  torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))
        _assert_same(BatchAssignResult(*(t[i] for t in ours)), ref)
    empty = assigner.assign_batch(priors, torch.zeros(2, 0, 4), torch.zeros(2, 0,
                                                                            dtype=torch.long),
                                  torch.zeros(2, 0, dtype=torch.bool), prior_valid=full)
    assert (empty.gt_inds == 0).all() and (empty.labels == -1).all()
    assert (empty.max_overlaps == 0).all()


def test_chunked_equals_unchunked_crowded() -> None:
    """Many gts, tiny chunks (1 prior per chunk included): identical to one chunk."""
    batch = _padded_batch([60, 45], seed=5)
    priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore, ignore_valid = batch
    for cfg in ({}, dict(gt_max_assign_all=False), dict(ignore_iof_thr=0.3)):
        full = RetinaIoUAssigner(**cfg).assign_batch(*batch)
        for chunk_numel in (2 * 60 * 17, 1):
            chunked = RetinaIoUAssigner(**cfg, chunk_numel=chunk_numel).assign_batch(*batch)
            _assert_same(chunked, full)


def test_pairwise_overlaps_bitwise_equal_mmdet() -> None:
    gen = torch.Generator().manual_seed(0)
    a = _boxes(37, gen)
    b = torch.cat([_boxes(50, gen), torch.rand(50, 4, generator=gen) * 30])  # + float/degenerate
    b[::9, 2] = b[::9, 0]  # zero-width boxes hit the eps clamp
    for mode in ('iou', 'iof'):
        assert torch.equal(pairwise_overlaps(a, b, mode), bbox_overlaps(a, b, mode))
        assert torch.equal(pairwise_overlaps(b, a, mode), bbox_overlaps(b, a, mode))
        batched = pairwise_overlaps(a[None], torch.stack([b, b.flip(0)]), mode)
        assert torch.equal(batched[1], bbox_overlaps(a, b.flip(0), mode))
    assert pairwise_overlaps(torch.zeros(0, 4), b).shape == (0, 100)
    with pytest.raises(ValueError, match='mode'):
        pairwise_overlaps(a, b, 'giou')


@pytest.mark.parametrize('kwargs, field', [
    (dict(pos_iou_thr=1.5), 'pos_iou_thr'),
    (dict(pos_iou_thr=-0.1), 'pos_iou_thr'),
    (dict(neg_iou_thr=0.6), 'neg_iou_thr'),  # > pos_iou_thr
    (dict(neg_iou_thr=-0.1), 'neg_iou_thr'),
    (dict(neg_iou_thr=(0.3, 0.1)), 'neg_iou_thr'),  # lo > hi
    (dict(neg_iou_thr=(0.1, 0.7)), 'neg_iou_thr'),  # hi > pos_iou_thr
    (dict(neg_iou_thr=(0.1, 0.2, 0.3)), 'neg_iou_thr'),
    (dict(min_pos_iou=1.2), 'min_pos_iou'),
    (dict(ignore_iof_thr=1.5), 'ignore_iof_thr'),
    (dict(ignore_iof_thr=float('nan')), 'ignore_iof_thr'),
    (dict(chunk_numel=0), 'chunk_numel'),
    (dict(chunk_numel=2.5), 'chunk_numel'),
])
def test_invalid_args_raise(kwargs: Dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetinaIoUAssigner(**kwargs)


def test_invalid_arg_is_an_assertion_error_too() -> None:
    """mmdet's own tests expect ``AssertionError`` from a bad argument: it catches ours."""
    with pytest.raises(AssertionError, match='pos_iou_thr'):
        RetinaIoUAssigner(pos_iou_thr=1.5)
    with pytest.raises(AssertionError, match='perm_range'):
        RetinaIoUAssigner(perm_repeat_gt_cfg=dict(perm_range=1.0))


def test_registry_build_and_list_pair() -> None:
    assigner = TASK_UTILS.build(dict(type='RetinaIoUAssigner', neg_iou_thr=[0.0, 0.4]))
    assert isinstance(assigner, RetinaIoUAssigner)
    assert assigner.neg_iou_thr == (0.0, 0.4)  # lists from configs are accepted as pairs
    default = TASK_UTILS.build(dict(type='RetinaIoUAssigner'))
    assert (default.pos_iou_thr, default.neg_iou_thr, default.min_pos_iou) == (0.5, 0.4, 0.0)


def _seeded(fn, seed: int = 0):
    """``fn()`` from a fixed global RNG state; returns its result and the state it leaves."""
    torch.manual_seed(seed)
    return fn(), torch.get_rng_state()


@pytest.mark.parametrize('num_gts', [0, 1, 8, 100])
@pytest.mark.parametrize('cfg_name', list(OPTION_CONFIGS))
def test_options_assign_matches_mmdet(num_gts: int, cfg_name: str) -> None:
    """Same assignment as mmdet, and the same random draws (perm_repeat_gt_cfg) from the
    global generator, so the generator is left in the same state."""
    cfg = OPTION_CONFIGS[cfg_name]
    priors, gts, labels, ignore = _scene(num_gts, 1)
    ref, ref_state = _seeded(lambda: _assign_mmdet(cfg, priors, gts, labels, ignore))
    ours, state = _seeded(lambda: RetinaIoUAssigner(**_mmdet_kwargs(cfg)).assign(
        InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels),
        InstanceData(bboxes=ignore)))
    assert torch.equal(state, ref_state)
    _assert_same(ours, ref)


@pytest.mark.parametrize('cfg_name', list(OPTION_CONFIGS))
def test_options_assign_batch_matches_per_image_mmdet(cfg_name: str) -> None:
    cfg = OPTION_CONFIGS[cfg_name]
    batch = _padded_batch([8, 0, 30, 1], seed=3)
    priors = batch[0]
    refs, ref_state = _seeded(lambda: [_mmdet_on_image(cfg, priors, *(t[i] for t in batch[1:]))
                                       for i in range(4)])
    for chunk_numel in (None, 4 * 30 * 60):
        assigner = RetinaIoUAssigner(**_mmdet_kwargs(cfg), chunk_numel=chunk_numel)
        ours, state = _seeded(lambda: assigner.assign_batch(*batch))
        assert torch.equal(state, ref_state)
        for i, ref in enumerate(refs):
            _assert_same(BatchAssignResult(*(t[i] for t in ours)), ref)
        # keyword arguments, ignore_valid omitted (all valid), as a head may call it
        kwargs = dict(priors=priors, gt_bboxes=batch[1], gt_labels=batch[2], gt_valid=batch[3],
                      prior_valid=batch[4], gt_bboxes_ignore=batch[5][:, :1])
        ours, _ = _seeded(lambda: assigner.assign_batch(**kwargs))
        refs_one_ignore, _ = _seeded(lambda: [
            _mmdet_on_image(cfg, priors, *(t[i] for t in batch[1:5]), batch[5][i, :1],
                            torch.ones(1, dtype=torch.bool)) for i in range(4)])
        for i, ref in enumerate(refs_one_ignore):
            _assert_same(BatchAssignResult(*(t[i] for t in ours)), ref)


def test_default_calculator_takes_batched_path() -> None:
    """Only a plain BboxOverlaps2D uses our batched IoU; anything else calls the calculator."""
    assert RetinaIoUAssigner().batched_iou
    assert RetinaIoUAssigner(iou_calculator=dict(type='BboxOverlaps2D', scale=2.)).batched_iou
    assert not RetinaIoUAssigner(iou_calculator=FP16).batched_iou
    assert not RetinaIoUAssigner(iou_calculator=dict(type='BboxOverlaps2D_GLIP')).batched_iou


def test_perm_repeat_draws_like_mmdet() -> None:
    """Jittered boxes and random draws equal mmdet's ``perm_repeat_bboxes``, including the
    redraws of invalid groups (too far from the original, or degenerate)."""
    boxes = torch.tensor([[10., 10., 20., 30.]] * 3 + [[0., 0., 5., 5.]] * 2 +
                         [[1., 2., 3., 4.], [10., 10., 20., 30.]])
    calc = TASK_UTILS.build(dict(type='BboxOverlaps2D'))
    for iou_thr, perm_range in ((0.7, 0.01), (0.999, 0.05), (0.97, 0.9), (0.5, 0.0)):
        ref, ref_state = _seeded(lambda: perm_repeat_bboxes(
            boxes, calc, dict(iou_thr=iou_thr, perm_range=perm_range)))
        ours, state = _seeded(lambda: jitter_repeated_boxes(boxes, calc, iou_thr, perm_range))
        assert torch.equal(ours, ref) and torch.equal(state, ref_state)
        assert torch.equal(ours[5], boxes[5])  # a box that occurs once is left alone
    # (0.999, 0.05) redraws: more draws than one per group of repeated boxes
    _, one_draw_each = _seeded(lambda: (torch.empty(2, 4).uniform_(), torch.empty(4, 4).uniform_()))
    _, state = _seeded(lambda: jitter_repeated_boxes(boxes, calc, 0.999, 0.05))
    assert not torch.equal(state, one_draw_each)


def _model_assigners(cfg) -> list:
    """Every ``MaxIoUAssigner`` dict in a model config."""
    if isinstance(cfg, dict):
        found = [cfg] if cfg.get('type') == 'MaxIoUAssigner' else []
        return found + [a for v in cfg.values() for a in _model_assigners(v)]
    if isinstance(cfg, (list, tuple)):
        return [a for v in cfg for a in _model_assigners(v)]
    return []


@pytest.mark.parametrize('path', ['cascade_rpn/cascade-rpn_r50-caffe_fpn_1x_coco.py',
                                  'v3det/faster_rcnn_r50_fpn_8x4_sample1e-3_mstrain_v3det_2x.py'])
def test_mmdet_zoo_assigners_with_type_swapped(path: str) -> None:
    """mmdet configs that set iou_calculator / perm_repeat_gt_cfg: every MaxIoUAssigner dict
    builds with only the type changed and assigns as mmdet's does."""
    root = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs')
    dicts = _model_assigners(Config.fromfile(os.path.join(root, path)).model.to_dict())
    assert dicts
    priors, gts, labels, ignore = _scene(30, 2)
    data = (InstanceData(priors=priors), InstanceData(bboxes=gts, labels=labels),
            InstanceData(bboxes=ignore))
    for cfg in dicts:
        ours_cfg = copy.deepcopy(cfg)
        ours_cfg['type'] = 'RetinaIoUAssigner'
        ref, ref_state = _seeded(lambda: TASK_UTILS.build(cfg).assign(*data))
        ours, state = _seeded(lambda: TASK_UTILS.build(ours_cfg).assign(*data))
        assert torch.equal(state, ref_state)
        _assert_same(ours, ref)


@pytest.mark.parametrize('kwargs, field', [
    (dict(gpu_assign_thr='10'), 'gpu_assign_thr'),
    (dict(gpu_assign_thr=True), 'gpu_assign_thr'),
    (dict(iou_calculator='BboxOverlaps2D'), 'iou_calculator'),
    (dict(iou_calculator=dict(scale=2.)), 'iou_calculator'),
    (dict(perm_repeat_gt_cfg=dict(iou_thr=0.7, range=0.01)), 'perm_repeat_gt_cfg'),
    (dict(perm_repeat_gt_cfg=dict(iou_thr=1.5)), 'iou_thr'),
    (dict(perm_repeat_gt_cfg=dict(perm_range=1.0)), 'perm_range'),
    (dict(perm_repeat_gt_cfg=0.01), 'perm_repeat_gt_cfg'),
])
def test_invalid_option_args_raise(kwargs: Dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetinaIoUAssigner(**kwargs)


def _grid_boxes(draw, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``(n, 4)`` boxes on a coarse integer grid: equal IoUs, duplicates and zero-area boxes
    are frequent."""
    x1 = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    y1 = draw(st.lists(st.integers(0, 12), min_size=n, max_size=n))
    w = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    h = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    boxes = torch.tensor([[a, b, a + c, b + d] for a, b, c, d in zip(x1, y1, w, h)],
                         dtype=dtype).view(n, 4)
    if n > 1 and draw(st.booleans()):  # an exact duplicate
        boxes[draw(st.integers(1, n - 1))] = boxes[0]
    return boxes


@st.composite
def assigner_cases(draw):
    """Random options and a 2-image padded batch over shared priors."""
    pos = draw(st.sampled_from([0.3, 0.5, 0.7]))
    neg = draw(st.sampled_from([0.0, 0.1, pos, (0.0, 0.1), (0.1, pos)]))
    cfg = dict(pos_iou_thr=pos, neg_iou_thr=neg,
               min_pos_iou=draw(st.sampled_from([0.0, 0.1, 0.3])),
               gt_max_assign_all=draw(st.booleans()), match_low_quality=draw(st.booleans()),
               ignore_iof_thr=draw(st.sampled_from([-1.0, 0.3, 0.7])),
               ignore_wrt_candidates=draw(st.booleans()),
               gpu_assign_thr=draw(st.sampled_from([-1, 2])),
               iou_calculator=draw(st.sampled_from([dict(type='BboxOverlaps2D'), FP16])),
               perm_repeat_gt_cfg=draw(st.sampled_from(
                   [None, dict(iou_thr=0.7, perm_range=0.01)])))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    num_priors = draw(st.integers(0, 30))
    priors = _grid_boxes(draw, num_priors, dtype)
    num_gts = [draw(st.integers(0, 8)) for _ in range(2)]
    max_gts, num_ign = max(num_gts), draw(st.integers(0, 2))
    gt_bboxes = torch.zeros(2, max_gts, 4, dtype=dtype)
    gt_valid = torch.zeros(2, max_gts, dtype=torch.bool)
    for i, n in enumerate(num_gts):
        gt_bboxes[i, :n], gt_valid[i, :n] = _grid_boxes(draw, n, dtype), True
    gt_labels = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=2 * max_gts,
                                           max_size=2 * max_gts))).view(2, max_gts)
    ignore = torch.stack([_grid_boxes(draw, num_ign, dtype) for _ in range(2)])
    prior_valid = None
    if draw(st.booleans()):
        prior_valid = torch.tensor(draw(st.lists(st.booleans(), min_size=2 * num_priors,
                                                 max_size=2 * num_priors))).view(2, num_priors)
    chunk_numel = draw(st.sampled_from([None, 1, 37]))
    return cfg, chunk_numel, (priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(case=assigner_cases())
def test_random_scenes_match_mmdet(case) -> None:
    """Random boxes (ties, duplicates, zero-area, no gts, no priors), dtypes and options:
    assign and assign_batch equal mmdet's MaxIoUAssigner image by image, random draws included."""
    cfg, chunk_numel, batch = case
    priors, gt_bboxes, gt_labels, gt_valid, prior_valid, ignore = batch
    if prior_valid is None:
        full = torch.ones(2, priors.size(0), dtype=torch.bool)
    else:
        full = prior_valid
    ignore_valid = torch.ones(ignore.shape[:2], dtype=torch.bool)
    refs, ref_state = _seeded(lambda: [
        _mmdet_on_image(cfg, priors, gt_bboxes[i], gt_labels[i], gt_valid[i], full[i], ignore[i],
                        ignore_valid[i]) for i in range(2)])
    assigner = RetinaIoUAssigner(**cfg, chunk_numel=chunk_numel)
    ours, state = _seeded(lambda: assigner.assign_batch(priors, gt_bboxes, gt_labels, gt_valid,
                                                        prior_valid, ignore))
    assert torch.equal(state, ref_state)
    for i, ref in enumerate(refs):
        _assert_same(BatchAssignResult(*(t[i] for t in ours)), ref)
    # per image through mmdet's interface
    valid = gt_valid[0]
    ref, ref_state = _seeded(lambda: _assign_mmdet(cfg, priors, gt_bboxes[0, valid],
                                                   gt_labels[0, valid], ignore[0]))
    one, state = _seeded(lambda: assigner.assign(
        InstanceData(priors=priors),
        InstanceData(bboxes=gt_bboxes[0, valid], labels=gt_labels[0, valid]),
        InstanceData(bboxes=ignore[0])))
    assert torch.equal(state, ref_state)
    _assert_same(one, ref)
