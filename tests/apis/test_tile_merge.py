"""Merging tile detections: the cut-box rule, class-aware NMS, SAHI's greedy merge."""
import pytest
import torch
from mmengine.structures import InstanceData

from mmdet_retina_plugin.apis.tile_merge import (
    check_merge,
    greedy_merge,
    inner_edge_mask,
    matching_pairs,
    merge_tile_detections,
    pairwise_overlap,
)

# two windows side by side on a 100 x 180 image: [0, 100) and [80, 180)
WINDOWS = torch.tensor([[0., 0., 100., 100.], [80., 0., 180., 100.]])


def _dets(boxes, scores, labels, windows):
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                        scores=torch.tensor(scores), labels=torch.tensor(labels),
                        window_ids=torch.tensor(windows))


def test_pairwise_overlap_values():
    a = torch.tensor([[0., 0., 10., 10.]])
    b = torch.tensor([[0., 0., 20., 20.], [5., 0., 15., 10.], [30., 30., 40., 40.]])
    # inside: IoU 100/400, IoS 100/100; half: IoU 50/150, IoS 50/100; apart: 0
    torch.testing.assert_close(pairwise_overlap(a, b), torch.tensor([[0.25, 1 / 3, 0.]]))
    torch.testing.assert_close(pairwise_overlap(a, b, 'ios'), torch.tensor([[1.0, 0.5, 0.]]))
    degenerate = torch.tensor([[3., 3., 3., 3.]])
    assert pairwise_overlap(degenerate, degenerate, 'ios').item() == 0


@pytest.mark.parametrize('metric, thr', [('iou', 0.3), ('ios', 0.5), ('ios', 1.0)])
def test_matching_pairs_equal_all_pairs(metric, thr):
    """The sorted, blocked search finds exactly the pairs of the full overlap matrix."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(700, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + torch.rand(700, 2, generator=g) * 40 + 1], 1)
    boxes[:50] = boxes[50:100]  # exact duplicates (IoS 1)
    labels = torch.randint(0, 3, (700,), generator=g)
    overlap = pairwise_overlap(boxes, boxes, metric)
    expected = ((overlap >= thr) & (overlap > 0) & (labels[:, None] == labels[None])).triu(1)
    first, second = matching_pairs(boxes, labels, thr, metric)
    assert len(first) > 50
    assert torch.equal(torch.stack([first, second]), torch.stack(expected.nonzero(as_tuple=True)))


def test_inner_edge_mask():
    boxes = torch.tensor([[70., 10., 100., 30.],    # right edge of window 0 (inner)
                          [0., 10., 20., 30.],      # left edge of window 0 = image edge
                          [40., 40., 60., 60.],     # inside
                          [81., 10., 95., 30.],     # left edge of window 1 (inner), 1 px in
                          [150., 70., 180., 100.]])  # image corner of window 1
    windows = WINDOWS[torch.tensor([0, 0, 0, 1, 1])]
    mask = inner_edge_mask(boxes, windows, 100, 180, edge_margin=2.0)
    assert mask.tolist() == [True, False, False, True, False]
    assert inner_edge_mask(boxes, windows, 100, 180, edge_margin=0.0).tolist() == \
        [True, False, False, False, False]


def test_cut_box_loses_to_whole_box_even_when_scoring_higher():
    # an object at x 90..110: window 0 sees 90..100 (cut, IoU 0.5 with the whole box, scores
    # higher), window 1 sees it whole
    dets = _dets([[90, 10, 100, 30], [90, 10, 110, 30]], [0.9, 0.6], [1, 1], [0, 1])
    out = merge_tile_detections(dets, WINDOWS, 100, 180, iou_thr=0.5)
    assert out.bboxes.tolist() == [[90, 10, 110, 30]]
    assert out.scores.tolist() == pytest.approx([0.6])
    # plain NMS would keep the cut box and drop the whole one (IoU 0.5 above 0.4)
    plain = merge_tile_detections(dets, WINDOWS, 100, 180, iou_thr=0.4, cut_ios_thr=None)
    assert plain.bboxes.tolist() == [[90, 10, 100, 30]]


def test_cut_rule_spares_other_classes_same_window_and_interior_boxes():
    dets = _dets([[90, 10, 100, 30], [90, 10, 110, 30],   # cut, whole of another class
                  [60, 60, 100, 90], [80, 65, 100, 85],   # cut box inside a cut box
                  [30, 30, 40, 40], [20, 20, 60, 60]],    # small inside large, both interior
                 [0.9, 0.6, 0.8, 0.7, 0.5, 0.4], [1, 2, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0])
    out = merge_tile_detections(dets, WINDOWS, 100, 180, iou_thr=0.5)
    assert len(out) == 6  # none suppressed: no whole box of the same class covers a cut one


def test_nms_is_class_aware_and_sorted():
    dets = _dets([[10, 10, 30, 30], [11, 10, 31, 30], [10, 10, 30, 30]], [0.5, 0.7, 0.6],
                 [0, 0, 1], [0, 0, 0])
    out = merge_tile_detections(dets, WINDOWS, 100, 180, iou_thr=0.5)
    assert out.scores.tolist() == pytest.approx([0.7, 0.6]) and out.labels.tolist() == [0, 1]
    assert len(merge_tile_detections(dets, WINDOWS, 100, 180, max_per_img=1)) == 1


def test_greedy_merge_unions_matching_boxes():
    boxes = torch.tensor([[10., 10., 30., 30.], [20., 10., 40., 30.], [12., 12., 18., 18.],
                          [50., 50., 60., 60.], [10., 10., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    labels = torch.tensor([0, 0, 0, 0, 1])
    out = greedy_merge(boxes, scores, labels, match_thr=0.5, metric='ios')
    # class 1 alone; class 0: box 0 takes box 1 (IoS 0.5) and box 2 (inside); box 3 apart
    assert out.labels.tolist() == [1, 0, 0]
    assert out.bboxes.tolist() == [[10, 10, 30, 30], [10, 10, 40, 30], [50, 50, 60, 60]]
    assert out.scores.tolist() == pytest.approx([0.95, 0.9, 0.6])
    # by IoU (1/3 and 0.09) nothing matches
    assert len(greedy_merge(boxes, scores, labels, match_thr=0.5, metric='iou')) == 5
    assert len(greedy_merge(boxes[:0], scores[:0], labels[:0], 0.5)) == 0


def test_empty_input():
    dets = _dets(torch.zeros((0, 4)).tolist(), [], [], [])
    dets.bboxes = dets.bboxes.reshape(0, 4)
    dets.labels, dets.window_ids = dets.labels.long(), dets.window_ids.long()
    for merge in ('nms', 'greedy'):
        out = merge_tile_detections(dets, WINDOWS, 100, 180, merge=merge)
        assert len(out) == 0 and out.bboxes.shape == (0, 4)


@pytest.mark.parametrize('args, match', [
    (('soft', 'ios', []), 'merge must be'), (('nms', 'giou', []), 'merge_metric'),
    (('nms', 'ios', [('merge_iou_thr', -0.1)]), 'merge_iou_thr'),
    (('nms', 'ios', [('cut_ios_thr', True)]), 'cut_ios_thr')])
def test_check_merge(args, match):
    with pytest.raises(ValueError, match=match):
        check_merge(*args)
