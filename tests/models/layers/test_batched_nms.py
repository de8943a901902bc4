"""batched_nms_batch: one call for the whole batch, equal to mmcv's batched_nms image by image."""
from typing import List

import pytest
import torch
from mmcv.ops import batched_nms

from mmdet_retina_plugin.models.layers import batched_nms as bn
from mmdet_retina_plugin.models.layers.batched_nms import batched_nms_batch


def clustered_boxes(num: int, num_classes: int, g: torch.Generator, size: float = 400.0):
    """Boxes jittered around a few centres, so many same-class pairs sit near any IoU
    threshold."""
    centres = torch.rand(max(num // 20, 1), 2, generator=g) * size
    pick = torch.randint(0, centres.size(0), (num,), generator=g)
    xy = centres[pick] + torch.randn(num, 2, generator=g) * 6
    wh = 20 + torch.rand(num, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(num, generator=g)
    # mostly one class per cluster (duplicates of one object), some other classes on top
    labels = torch.where(torch.rand(num, generator=g) < 0.8, pick % num_classes,
                         torch.randint(0, num_classes, (num,), generator=g))
    return boxes, scores, labels


def per_image_mmcv(images, nms_cfg, max_per_img=None) -> List[torch.Tensor]:
    """mmdet's per-image call: indices (into the concatenated inputs) mmcv keeps, in its order."""
    out, base = [], 0
    for boxes, scores, labels in images:
        if boxes.numel():
            _, keep = batched_nms(boxes, scores, labels, dict(nms_cfg))
        else:
            keep = torch.zeros(0, dtype=torch.long)
        out.append((keep if max_per_img is None else keep[:max_per_img]) + base)
        base += boxes.size(0)
    return out


def run_ours(images, nms_cfg, max_per_img=None):
    boxes = torch.cat([b for b, _, _ in images])
    scores = torch.cat([s for _, s, _ in images])
    labels = torch.cat([lab for _, _, lab in images])
    img_ids = torch.cat([torch.full((b.size(0),), i) for i, (b, _, _) in enumerate(images)])
    return batched_nms_batch(boxes, scores, labels, img_ids, len(images), dict(nms_cfg),
                             max_per_img)


@pytest.mark.parametrize('nms_cfg', [
    dict(type='nms', iou_threshold=0.5),
    dict(type='nms', iou_threshold=0.3),
    dict(type='nms', iou_threshold=0.7, split_thr=100),  # mmcv's per-class path
    dict(type='nms', iou_threshold=0.5, class_agnostic=True),
    dict(type='nms', iou_threshold=0.6, offset=1),
])
@pytest.mark.parametrize('sizes,num_classes', [((300, 0, 57, 1), 80), ((800, 600), 3),
                                               ((1500,), 1)])
@pytest.mark.parametrize('kernel_min_group', [0, 128, 10 ** 9])  # all kernel, mixed, all pairs
def test_equals_mmcv_per_image(nms_cfg, sizes, num_classes, kernel_min_group, monkeypatch):
    monkeypatch.setattr(bn, '_KERNEL_MIN_GROUP', kernel_min_group)
    g = torch.Generator().manual_seed(sum(sizes) + num_classes)
    images = [clustered_boxes(n, num_classes, g) for n in sizes]
    expected = per_image_mmcv(images, nms_cfg)
    got = run_ours(images, nms_cfg)
    assert len(got) == len(sizes)
    suppressed = 0
    for e, o, n in zip(expected, got, sizes):
        assert torch.equal(o, e)
        suppressed += n - e.numel()
    assert suppressed > sum(sizes) // 10  # the clusters really overlap


def test_max_per_img_and_empty_batch():
    g = torch.Generator().manual_seed(3)
    images = [clustered_boxes(n, 5, g) for n in (400, 300)]
    cfg = dict(type='nms', iou_threshold=0.5)
    for e, o in zip(per_image_mmcv(images, cfg, 20), run_ours(images, cfg, 20)):
        assert o.numel() == 20 and torch.equal(o, e)
    empty = torch.zeros(0, 4)
    out = batched_nms_batch(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long),
                            torch.zeros(0, dtype=torch.long), 2, cfg)
    assert [o.numel() for o in out] == [0, 0]


def test_pair_chunks_give_the_same_result(monkeypatch):
    g = torch.Generator().manual_seed(4)
    images = [clustered_boxes(600, 2, g), clustered_boxes(500, 2, g)]
    cfg = dict(type='nms', iou_threshold=0.5)
    monkeypatch.setattr(bn, '_KERNEL_MIN_GROUP', 10 ** 9)  # every group on the pairs path
    whole = run_ours(images, cfg)
    monkeypatch.setattr(bn, '_PAIR_CHUNK', 997)  # ~100 chunks, including partial groups
    for a, b in zip(whole, run_ours(images, cfg)):
        assert torch.equal(a, b)


def test_chain_of_overlaps_is_resolved_greedily():
    # five boxes in a row, each overlapping only its neighbours, scores descending: the
    # greedy answer keeps 0, 2, 4 (1 and 3 are suppressed by kept boxes; 2 survives because
    # its only earlier neighbour, 1, was suppressed)
    boxes = torch.tensor([[i * 6.0, 0.0, i * 6.0 + 10.0, 10.0] for i in range(5)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.zeros(5, dtype=torch.long)
    (keep,) = batched_nms_batch(boxes, scores, labels, torch.zeros(5, dtype=torch.long), 1,
                                dict(type='nms', iou_threshold=0.2))
    assert keep.tolist() == [0, 2, 4]
    _, mmcv_keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.2))
    assert torch.equal(keep, mmcv_keep)


def test_unsupported_config_is_refused():
    assert not bn.supports(dict(type='soft_nms', iou_threshold=0.5))
    assert not bn.supports(dict(type='nms', iou_threshold=0.5, max_num=10))
    with pytest.raises(ValueError, match='nms_cfg'):
        batched_nms_batch(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.long),
                          torch.zeros(1, dtype=torch.long), 1, dict(type='soft_nms',
                                                                     iou_threshold=0.5))
