"""Anchor coverage against a hand-computed case and mmcv's resize rule."""
import json
import math

import mmcv
import pytest
import torch
from mmengine.config import Config

from mmdet_retina_plugin.tools import anchor_coverage as ac
from mmdet_retina_plugin.tools import coverage_view as cv

# Two levels, one square anchor per location, no centre offset:
#   stride 32 -> 32x32 anchors centred at (32i, 32j); stride 64 -> 64x64 anchors at (64i, 64j).
ANCHORS = dict(type='AnchorGenerator', octave_base_scale=1, scales_per_octave=1,
               ratios=[1.0], strides=[32, 64])

# One 64x64 image resized x2 to 128x128 (already a multiple of the pad divisor 32).
# Boxes (COCO xywh, original px) -> resized (x1, y1, x2, y2) -> best anchor IoU:
#   A [8,8,16,16]   -> [16,16,48,48]: equals the stride-32 anchor at (32,32)            -> 1
#   B [8,0,16,16]   -> [16,0,48,32]:  stride-32 anchor at (32,0) = [16,-16,48,16]:
#                      inter 32*16 = 512, union 1024 + 1024 - 512 = 1536               -> 1/3
#                      (stride-64 anchors: 512 / (4096 + 1024 - 512) = 1/9)
#   C [0,0,16,16]   -> [0,0,32,32]:   stride-32 anchors at (0|32, 0|32): 256/1792 = 1/7;
#                      stride-64 anchor at (0,0) = [-32,-32,32,32] contains it: 1024/4096 -> 1/4
#   D [16,16,32,32] -> [32,32,96,96]: equals the stride-64 anchor at (64,64)            -> 1
#                      (stride-32 anchor at (64,64) = [48,48,80,80] inside it: 1/4)
# Original areas: A, B, C 256 -> COCO 'small'; D 1024 = 32**2 -> 'medium'.
IMAGES = [dict(id=1, width=64, height=64, file_name='a.png')]
ANNS = [
    dict(id=1, image_id=1, bbox=[8, 8, 16, 16], area=256, category_id=1, iscrowd=0),     # A
    dict(id=2, image_id=1, bbox=[8, 0, 16, 16], area=256, category_id=1, iscrowd=0),     # B
    dict(id=3, image_id=1, bbox=[0, 0, 16, 16], area=256, category_id=1, iscrowd=0),     # C
    dict(id=4, image_id=1, bbox=[16, 16, 32, 32], area=1024, category_id=1, iscrowd=0),  # D
    # Skipped like mmdet's CocoDataset does: a crowd box and a box under 1 px wide.
    dict(id=5, image_id=1, bbox=[0, 0, 40, 40], area=1600, category_id=1, iscrowd=1),
    dict(id=6, image_id=1, bbox=[0, 0, 0.5, 10], area=5, category_id=1, iscrowd=0),
]


def _write_ann(tmp_path):
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(images=IMAGES, annotations=ANNS,
                                    categories=[dict(id=1, name='thing')])))
    return path


def _one_box_ann(path, bbox):
    """A COCO file of one 64x64 image holding one box ``[x, y, w, h]``."""
    path.write_text(json.dumps(dict(
        images=[dict(id=1, width=64, height=64, file_name='a.png')],
        annotations=[dict(id=1, image_id=1, bbox=bbox, area=bbox[2] * bbox[3], category_id=1,
                          iscrowd=0)],
        categories=[dict(id=1, name='thing')])))
    return path


def _write_config(tmp_path):
    cfg = Config(dict(
        model=dict(type='RetinaNet',
                   data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=32),
                   bbox_head=dict(type='RetinaNetHead', anchor_generator=ANCHORS),
                   train_cfg=dict(assigner=dict(type='RetinaIoUAssigner', pos_iou_thr=0.5,
                                                neg_iou_thr=0.4))),
        test_pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='Resize', scale=(128, 128), keep_ratio=True),
                       dict(type='PackDetInputs')]))
    path = tmp_path / 'cfg.py'
    cfg.dump(str(path))
    return path


def test_model_view_reads_config(tmp_path):
    view = cv.model_view_from_config(Config.fromfile(str(_write_config(tmp_path))))
    assert view.scale == (128, 128) and view.keep_ratio
    assert view.pad_size_divisor == 32 and view.pos_iou_thr == 0.5
    assert view.anchor_generator['strides'] == [32, 64]


@pytest.mark.parametrize('size,scale', [((640, 427), (1333, 800)), ((500, 375), (1333, 800)),
                                        ((333, 1000), (640, 640)), ((64, 64), (128, 128))])
def test_resized_shape_matches_mmcv(size, scale):
    view = cv.ModelView(anchor_generator=ANCHORS, scale=scale, keep_ratio=True)
    assert view.resized_shape(*size) == mmcv.rescale_size(size, scale)


def test_invalid_view_raises():
    with pytest.raises(ValueError, match='pos_iou_thr'):
        cv.ModelView(anchor_generator=ANCHORS, pos_iou_thr=0.0)
    with pytest.raises(ValueError, match='pad_size_divisor'):
        cv.ModelView(anchor_generator=ANCHORS, pad_size_divisor=0)


def test_hand_computed_coverage(tmp_path):
    view = cv.model_view_from_config(Config.fromfile(str(_write_config(tmp_path))))
    gts = cv.load_gts(_write_ann(tmp_path), view)
    assert gts.shapes() == [(128, 128)]
    boxes = gts.all_boxes()
    assert boxes.tolist() == [[16, 16, 48, 48], [16, 0, 48, 32], [0, 0, 32, 32], [32, 32, 96, 96]]

    best_iou, best_level = ac.best_anchor_iou(gts, view.anchor_generator)
    assert best_iou.tolist() == pytest.approx([1.0, 1 / 3, 1 / 4, 1.0], abs=1e-6)
    assert best_level.tolist() == [0, 0, 1, 1]

    s = ac.summarize(best_iou, best_level, gts.all_areas(), boxes, 0.5, ['P5', 'P6'])
    assert s['overall']['num_gts'] == 4
    assert s['overall']['below_thr_share'] == pytest.approx(2 / 4)  # B and C
    assert s['coverage'] == pytest.approx(0.5)
    assert s['by_coco_size']['small']['num_gts'] == 3
    assert s['by_coco_size']['small']['below_thr_share'] == pytest.approx(2 / 3)
    assert s['by_coco_size']['small']['mean_best_iou'] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)
    assert s['by_coco_size']['medium'] == dict(num_gts=1, below_thr_share=0.0, mean_best_iou=1.0)
    assert s['by_coco_size']['large']['num_gts'] == 0
    assert s['by_coco_size']['large']['below_thr_share'] is None
    # resized sides: A, B, C are 32 px, D is 64 px
    assert s['by_size_bin']['32-64']['num_gts'] == 3
    assert s['by_size_bin']['32-64']['below_thr_share'] == pytest.approx(2 / 3)
    assert s['by_size_bin']['64-128']['num_gts'] == 1
    # best level: A, B at P5 (B uncovered); C, D at P6 (C uncovered)
    assert s['by_level']['P5']['below_thr_share'] == pytest.approx(1 / 2)
    assert s['by_level']['P6']['below_thr_share'] == pytest.approx(1 / 2)


@pytest.mark.parametrize('anchor_generator', [
    dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
         ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
    dict(type='AnchorGenerator', octave_base_scale=2, scales_per_octave=2, ratios=[0.25, 1.0],
         strides=[8, 16, 32], center_offset=0.5)])
def test_best_iou_equals_brute_force_over_all_anchors(anchor_generator):
    # The nearest-cell shortcut must give what mmdet's bbox_overlaps gives against every anchor
    # that mmdet's AnchorGenerator places on the padded 160x224 image.
    from mmdet.structures.bbox import bbox_overlaps
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * torch.tensor([224.0, 160.0])
    wh = torch.exp(torch.rand(300, 2, generator=g) * 5.0) + 1.0  # 2 .. 150 px, any aspect
    boxes = torch.cat([xy, xy + wh], dim=1)
    gts = cv.GtSet(boxes={(160, 224): boxes}, areas={(160, 224): torch.ones(300)})
    best_iou, best_level = ac.best_anchor_iou(gts, anchor_generator)
    generator = ac.build_anchor_generator(anchor_generator)
    sizes = [(math.ceil(160 / s), math.ceil(224 / s)) for s, _ in generator.strides]
    per_level = torch.stack([bbox_overlaps(boxes, a).max(dim=1).values
                             for a in generator.grid_priors(sizes, device='cpu')], dim=1)
    assert torch.allclose(best_iou, per_level.max(dim=1).values, atol=1e-6)
    chosen = per_level.gather(1, best_level[:, None]).squeeze(1)
    assert torch.allclose(chosen, per_level.max(dim=1).values, atol=1e-6)


def test_padding_places_extra_anchors(tmp_path):
    # No resize; one 16x16 box [48,48,64,64] in the corner of a 64x64 image.
    # Divisor 32 -> padded 64x64: stride-32 grid 2x2 (centres 0, 32): the nearest anchor
    #   [16,16,48,48] only touches the box; stride-64 grid 1x1: [-32,-32,32,32]   -> best IoU 0.
    # Divisor 128 -> padded 128x128: stride-32 grid 4x4 adds the anchor at (64,64) =
    #   [48,48,80,80], which contains the box: 256/1024                           -> best IoU 1/4.
    ann = _one_box_ann(tmp_path / 'border.json', [48, 48, 16, 16])
    for divisor, expected in ((32, 0.0), (128, 1 / 4)):
        view = cv.ModelView(anchor_generator=ANCHORS, pad_size_divisor=divisor)
        best_iou, _ = ac.best_anchor_iou(cv.load_gts(ann, view), ANCHORS)
        assert best_iou.item() == pytest.approx(expected, abs=1e-6)


def test_search_finds_the_missing_ratio(tmp_path):
    # One 16x64 box [24,0,40,64] centred on the stride-32 grid point (32,32) of a 64x64 image.
    # Current square anchors: [16,16,48,48] overlaps it 16*32 = 512 -> 512/1536 = 1/3 < 0.5,
    # so coverage is 0. Ratio h/w = 2 at octave_base_scale 1 gives a 32/sqrt(2) x 32*sqrt(2)
    # anchor [20.7,9.4,43.3,54.6]: inter 16 * 45.25 = 724.1, union 2048 - 724.1 -> IoU 0.547,
    # so the 3 ratios (0.5, 1, 2) already reach coverage 1: the cheapest such setting (A = 3).
    ann = _one_box_ann(tmp_path / 'tall.json', [24, 0, 16, 64])
    view = cv.ModelView(anchor_generator=ANCHORS, pad_size_divisor=32)
    gts = cv.load_gts(ann, view)
    assert ac.coverage_of(gts, ANCHORS, 0.5) == 0.0
    suggestions = ac.search_anchor_settings(gts, view, top=3)
    assert suggestions[0]['coverage'] == 1.0
    assert suggestions[0]['anchors_per_location'] == 3
    assert suggestions[0]['octave_base_scale'] == 1
    assert suggestions[0]['ratios'] == [0.5, 1.0, 2.0]
    assert suggestions[0]['by_coco_size'] == dict(all=1.0, small=None, medium=1.0, large=None)
    assert all(r['coverage'] > 0.0 for r in suggestions)


def test_cli_writes_report_and_histogram(tmp_path, capsys):
    from mmdet_retina_plugin.tools.cli import main
    out = tmp_path / 'out'
    main(['coverage', str(_write_ann(tmp_path)), '--config', str(_write_config(tmp_path)),
          '--out', str(out), '--no-search'])
    text = capsys.readouterr().out
    assert 'coverage (best anchor IoU >= 0.5):  50.00%' in text
    result = json.loads((out / 'coverage.json').read_text())
    assert result['summary']['coverage'] == pytest.approx(0.5)
    assert result['current']['anchors_per_location'] == 1
    assert (out / 'best_iou_hist.png').stat().st_size > 1000
