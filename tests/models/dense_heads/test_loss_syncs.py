"""loss_by_feat never waits for the device: counted on the CPU with torch.profiler (the ops that
would synchronise the host with a GPU stream), and its tensor core compiles whole with
``torch.compile(fullgraph=True)``, assignment included."""
import copy

import pytest
import torch
from head_pairs import METAS, build_pair, random_gts, random_maps
from mmengine.structures import InstanceData
from sync_count import count_syncs

from mmdet_retina_plugin.models.dense_heads.retina_gts import pad_gts

ASSIGNER = dict(type='RetinaIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0)
RETINA = dict(loss_cls=dict(type='RetinaFocalLoss', gamma=2.0, alpha=0.25))
METAS3 = METAS + [copy.deepcopy(METAS[1])]
CASES = {  # (train_cfg overrides, head overrides): every mode assign_batch batches
    'default': ({}, {}),
    'ignore_regions': (dict(assigner=dict(ASSIGNER, ignore_iof_thr=0.5)), {}),
    'ignore_wrt_ignore_box': (dict(assigner=dict(ASSIGNER, ignore_iof_thr=0.5,
                                                 ignore_wrt_candidates=False)), {}),
    'chunked': (dict(assigner=dict(ASSIGNER, chunk_numel=5000)), {}),
    'first_best_only': (dict(assigner=dict(ASSIGNER, gt_max_assign_all=False)), {}),
    'no_low_quality': (dict(assigner=dict(ASSIGNER, match_low_quality=False,
                                          neg_iou_thr=(0.1, 0.4))), {}),
    'border_and_pos_weight': (dict(allowed_border=0, pos_weight=2.0), {}),
    'smooth_l1': ({}, dict(loss_bbox=dict(type='SmoothL1Loss', beta=0.11))),
    'giou_decoded': ({}, dict(loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
                              reg_decoded_bbox=True)),
    'moving_average': ({}, dict(ours_only=dict(RETINA, avg_factor_momentum=0.9))),
}


def retina_head(case):
    train, head = copy.deepcopy(CASES[case])
    train.setdefault('assigner', ASSIGNER)
    head.setdefault('ours_only', RETINA)
    return build_pair('RetinaIoUAssigner', train=train, **head)[1]


def batch_of_three(gt_counts=(6, 0, 2)):
    """Three images with different gt counts (one without gts), ignore regions in image 0."""
    cls, box = random_maps()
    cls, box = ([torch.cat([m, m[:1]]) for m in maps] for maps in (cls, box))
    gts = [random_gts(n, m['img_shape'], seed=i)
           for i, (n, m) in enumerate(zip(gt_counts, METAS3))]
    ignores = [InstanceData(bboxes=torch.tensor([[10.0, 10.0, 90.0, 70.0]])), None, None]
    return cls, box, gts, ignores


@pytest.mark.parametrize('case', sorted(CASES))
def test_loss_by_feat_issues_no_host_sync(case):
    head = retina_head(case)
    cls, box, gts, ignores = batch_of_three()
    head.loss_by_feat(cls, box, gts, METAS3, ignores)  # fills the anchor cache
    syncs = count_syncs(lambda: head.loss_by_feat(cls, box, gts, METAS3, ignores))
    # the gt report reads its counts once; on the CPU they are already on the host
    assert syncs.pop('tolist') == 1
    assert not +syncs, syncs


def test_batch_without_gts_issues_no_host_sync():
    head = retina_head('default')
    cls, box, gts, _ = batch_of_three((0, 0, 0))
    out = head.loss_by_feat(cls, box, gts, METAS3)
    assert all(float(v) == 0 for v in out['loss_bbox']) and float(sum(out['loss_cls'])) > 0
    syncs = count_syncs(lambda: head.loss_by_feat(cls, box, gts, METAS3))
    assert syncs.pop('tolist') == 1 and not +syncs, syncs


def test_loss_core_compiles_without_graph_breaks():
    """``retina_losses`` (assignment with ignore regions, targets, both losses, normaliser) is
    one graph; its compiled per-level values equal eager ones."""
    head = retina_head('ignore_regions')
    cls, box, gts, ignores = batch_of_three()
    sizes = [c.shape[-2:] for c in cls]
    anchors, _ = head.anchor_cache.anchors(sizes, torch.device('cpu'), torch.float32)
    valid = head.anchor_cache.valid_flags(sizes, [m['pad_shape'] for m in METAS3], 'cpu')
    padded = pad_gts(gts, METAS3, ignores, anchors)
    eager = head.retina_losses(cls, box, anchors, valid, padded)
    torch._dynamo.reset()
    compiled = torch.compile(head.retina_losses, fullgraph=True, backend='aot_eager')(
        cls, box, anchors, valid, padded)
    assert float(eager[1].sum()) > 0  # positives exist: the box loss is exercised
    for got, expected in zip(compiled, eager):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
