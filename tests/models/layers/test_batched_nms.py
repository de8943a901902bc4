"""batched_nms_padded: one call for a padded batch, equal to mmcv's batched_nms image by image."""
from typing import List

import pytest
import torch
from mmcv.ops import batched_nms

from mmdet_retina_plugin.models.layers import batched_nms as bn
from mmdet_retina_plugin.models.layers.batched_nms import batched_nms_padded
from mmdet_retina_plugin.utils.errors import RetinaConfigError

# on CUDA, ours runs the Triton kernel and mmcv its CUDA kernel (which tests IoU by multiplying)
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


@pytest.fixture(params=['host kernel', 'rounds'])
def greedy_path(request, monkeypatch):
    """On the CPU, mmcv's kernel per image (the default) or the rounds a GPU without Triton
    runs (forced here)."""
    if request.param == 'rounds':
        monkeypatch.setattr(bn, '_host_kernel', lambda boxes: False)
    return request.param


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
    """mmdet's per-image call: the indices mmcv keeps, in its order."""
    out = []
    for boxes, scores, labels in images:
        if boxes.numel():
            _, keep = batched_nms(boxes, scores, labels, dict(nms_cfg))
        else:
            keep = torch.zeros(0, dtype=torch.long)
        out.append(keep if max_per_img is None else keep[:max_per_img])
    return out


def padded(images, width=None):
    """The images' candidates in one ``(B, M)`` table, each padded with random invalid boxes
    (which must never be kept nor suppress anything)."""
    width = width or max(b.size(0) for b, _, _ in images) + 7
    g = torch.Generator().manual_seed(99)
    boxes = torch.rand(len(images), width, 4, generator=g) * 400
    boxes[..., 2:] += boxes[..., :2]
    scores = torch.rand(len(images), width, generator=g) + 1  # above every valid score
    labels = torch.randint(0, 3, (len(images), width), generator=g)
    valid = torch.zeros(len(images), width, dtype=torch.bool)
    for i, (b, s, lab) in enumerate(images):
        n = b.size(0)
        boxes[i, :n], scores[i, :n], labels[i, :n], valid[i, :n] = b, s, lab, True
    return boxes, scores, labels, valid


def run_ours(images, nms_cfg, max_per_img=None) -> List[torch.Tensor]:
    device = images[0][0].device
    boxes, scores, labels, valid = (t.to(device) for t in padded(images))
    keep, counts = batched_nms_padded(boxes, scores, labels, valid, dict(nms_cfg), max_per_img)
    assert keep.numel() == sum(counts) and len(counts) == len(images)
    width = scores.size(1)
    return [k - i * width for i, k in enumerate(keep.split(counts))]


def assert_same_keep(got, expected, scores):
    """Same kept boxes in the same order, up to the order of exactly tied scores (mmcv sorts
    with an unspecified order for ties)."""
    assert got.numel() == expected.numel()
    assert set(got.tolist()) == set(expected.tolist())
    assert torch.equal(scores[got], scores[expected])


@pytest.mark.parametrize('nms_cfg', [
    dict(type='nms', iou_threshold=0.5),
    dict(type='nms', iou_threshold=0.3),
    dict(type='nms', iou_threshold=0.7, split_thr=100),  # mmcv's per-class path
    dict(type='nms', iou_threshold=0.5, class_agnostic=True),
    dict(type='nms', iou_threshold=0.6, offset=1),
])
@pytest.mark.parametrize('sizes,num_classes', [((300, 0, 57, 1), 80), ((800, 600), 3),
                                               ((1500,), 1)])
@pytest.mark.parametrize('max_per_img', [None, 20])
@pytest.mark.parametrize('device', DEVICES)
def test_equals_mmcv_per_image(nms_cfg, sizes, num_classes, max_per_img, device, greedy_path):
    g = torch.Generator().manual_seed(sum(sizes) + num_classes)
    images = [tuple(t.to(device) for t in clustered_boxes(n, num_classes, g)) for n in sizes]
    expected = per_image_mmcv(images, nms_cfg, max_per_img)
    got = run_ours(images, nms_cfg, max_per_img)
    assert len(got) == len(sizes)
    for e, o, (_, scores, _) in zip(expected, got, images):
        assert_same_keep(o, e, scores)
    if max_per_img is None:
        suppressed = sum(n - e.numel() for e, n in zip(expected, sizes))
        assert suppressed > sum(sizes) // 10  # the clusters really overlap


def test_rounds_bounded_by_max_per_img_still_exact(greedy_path):
    # one class, boxes on a grid that overlap nobody: every box is kept, so the group needs
    # as many rounds as boxes; max_per_img=7 stops after 7 rounds and must still return
    # mmcv's first 7
    xy = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing='ij'),
                     -1).reshape(-1, 2) * 30
    boxes = torch.cat([xy, xy + 20], 1)
    scores = torch.linspace(0.9, 0.1, 30)
    labels = torch.zeros(30, dtype=torch.long)
    images = [(boxes, scores, labels), (boxes.flip(0), scores, labels)]
    for e, o, (_, s, _) in zip(per_image_mmcv(images, dict(iou_threshold=0.5), 7),
                               run_ours(images, dict(type='nms', iou_threshold=0.5), 7), images):
        assert o.numel() == 7
        assert_same_keep(o, e, s)


def test_empty_batch_and_no_valid_candidate():
    cfg = dict(type='nms', iou_threshold=0.5)
    keep, counts = batched_nms_padded(torch.zeros(2, 0, 4), torch.zeros(2, 0),
                                      torch.zeros(2, 0, dtype=torch.long),
                                      torch.zeros(2, 0, dtype=torch.bool), cfg, 100)
    assert keep.numel() == 0 and counts == [0, 0]
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 3] * 2)
    keep, counts = batched_nms_padded(boxes, torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.long),
                                      torch.zeros(2, 3, dtype=torch.bool), cfg, 100)
    assert keep.numel() == 0 and counts == [0, 0]


def test_chain_of_overlaps_is_resolved_greedily():
    # five boxes in a row, each overlapping only its neighbours, scores descending: the
    # greedy answer keeps 0, 2, 4 (1 and 3 are suppressed by kept boxes; 2 survives because
    # its only earlier neighbour, 1, was suppressed)
    boxes = torch.tensor([[i * 6.0, 0.0, i * 6.0 + 10.0, 10.0] for i in range(5)])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.zeros(5, dtype=torch.long)
    keep, counts = batched_nms_padded(boxes[None], scores[None], labels[None],
                                      torch.ones(1, 5, dtype=torch.bool),
                                      dict(type='nms', iou_threshold=0.2))
    assert keep.tolist() == [0, 2, 4] and counts == [3]
    _, mmcv_keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=0.2))
    assert torch.equal(keep, mmcv_keep)


def test_class_offsets_use_only_valid_candidates():
    # mmcv shifts by the largest coordinate of the boxes it gets: an invalid candidate far away
    # must not change the shift (and hence the rounding)
    boxes = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 1e6, 1e6]]])
    labels = torch.tensor([[0, 2, 1]])
    valid = torch.tensor([[True, True, False]])
    shifted = bn.class_offset_boxes(boxes, labels, valid)
    # max = 8 over the valid boxes: label 2 moves by 2 * (8 + 1)
    assert shifted[0, :2].tolist() == [[1.0, 2.0, 3.0, 4.0], [23.0, 24.0, 25.0, 26.0]]


def test_unsupported_config_is_refused():
    assert not bn.supports(dict(type='soft_nms', iou_threshold=0.5))
    assert not bn.supports(dict(type='nms', iou_threshold=0.5, max_num=10))
    assert not bn.supports(dict(type='nms', iou_threshold=0.5, offset=2))
    with pytest.raises(RetinaConfigError, match='nms_cfg'):
        batched_nms_padded(torch.zeros(1, 1, 4), torch.zeros(1, 1),
                           torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                           dict(type='soft_nms', iou_threshold=0.5))
