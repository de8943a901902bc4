"""RetinaNetHead stays finite whatever boxes the pipeline feeds it: degenerate gt boxes (width or
height <= 0 inside the image) are ignored with one warning per image, non-finite ones raise;
straight into ``loss_by_feat`` and through mmengine's Runner without ``RetinaSanitizeGt``."""
import copy
import math
import os.path as osp
import warnings

import pytest
import torch
from head_pairs import METAS, assert_loss_parity, build_pair, random_gts, random_maps
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from tiny_detector import tiny_config, tiny_data

import mmdet_retina_plugin  # noqa: F401  (registers our modules)

NAMED_METAS = [dict(m, img_id=100 + i, img_path=f'imgs/{100 + i}.jpg')
               for i, m in enumerate(METAS)]
H0, W0 = METAS[0]['img_shape']
BAD_BOXES = {  # each added to image 0, whose image is 250 x 300 (h x w)
    'zero_width': [40.0, 50.0, 40.0, 90.0],
    'zero_height': [40.0, 50.0, 120.0, 50.0],
    'negative_width': [120.0, 50.0, 40.0, 90.0],
    'negative_height': [40.0, 90.0, 120.0, 50.0],
    'outside_right': [W0 + 10.0, 20.0, W0 + 60.0, 80.0],
    'outside_above': [20.0, -80.0, 90.0, -10.0],
}


def with_extra_box(gts, box, img=0):
    out = [copy.deepcopy(g) for g in gts]
    g = out[img]
    out[img] = InstanceData(bboxes=torch.cat([g.bboxes[:2], torch.tensor([box]), g.bboxes[2:]]),
                            labels=torch.cat([g.labels[:2], torch.tensor([1]), g.labels[2:]]))
    return out


def clean_gts():
    return [random_gts(n, m['img_shape'], seed=i) for i, (n, m) in enumerate(zip((6, 3), METAS))]


def losses(head, gts):
    cls, box = random_maps()
    return head.loss_by_feat(cls, box, gts, NAMED_METAS)


@pytest.mark.parametrize('assigner', ['RetinaIoUAssigner', 'MaxIoUAssigner'])
@pytest.mark.parametrize('case', sorted(BAD_BOXES))
def test_degenerate_box_is_ignored_with_one_warning(assigner, case):
    """Losses and gradients equal stock RetinaHead's on the gts without the bad box."""
    stock, ours = build_pair(assigner)
    gts = clean_gts()
    with pytest.warns(UserWarning) as record:
        bad = losses(ours, with_extra_box(gts, BAD_BOXES[case]))
    messages = [str(w.message) for w in record if 'width or height' in str(w.message)]
    assert len(messages) == 1 and "img_id=100 img_path='imgs/100.jpg'" in messages[0]
    assert all(torch.isfinite(x) for v in bad.values() for x in v)
    clean = assert_loss_parity(stock, ours, gts)  # clean gts: equal to stock, no warning
    for k in ('loss_cls', 'loss_bbox'):
        torch.testing.assert_close(bad[k], clean[k], rtol=1e-6, atol=0)


def test_stock_gives_nan_on_zero_width_box():
    """Why the guard exists: mmdet's head matches every anchor to a zero-width box (IoU 0 >=
    min_pos_iou=0) and encodes ``log(0)``."""
    stock, _ = build_pair()
    out = losses(stock, with_extra_box(clean_gts(), BAD_BOXES['zero_width']))
    assert not torch.isfinite(sum(out['loss_bbox']))


def test_clip_border_off_keeps_a_box_outside_the_image():
    """Without clipping (``bbox_coder.clip_border=False``) a box outside the image has a size:
    it is a gt like any other."""
    coder = dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[1.0] * 4,
                 clip_border=False)
    stock, ours = build_pair('RetinaIoUAssigner', bbox_coder=coder)
    gts = with_extra_box(clean_gts(), BAD_BOXES['outside_right'])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert_loss_parity(stock, ours, gts)


def test_clean_batch_does_not_warn():
    _, ours = build_pair('RetinaIoUAssigner')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        losses(ours, clean_gts())


@pytest.mark.parametrize('assigner', ['RetinaIoUAssigner', 'MaxIoUAssigner'])
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_non_finite_box_raises_naming_the_image(assigner, value):
    _, ours = build_pair(assigner)
    gts = with_extra_box(clean_gts(), [10.0, 20.0, value, 60.0], img=1)
    with pytest.raises(ValueError, match=r"finite.*img_id=101 img_path='imgs/101.jpg'"):
        losses(ours, gts)


@TRANSFORMS.register_module(force=True)
class _InjectDegenerateBoxes(BaseTransform):
    """Adds boxes of zero / negative size and one outside the image to every image."""

    def transform(self, results: dict) -> dict:
        h, w = results['img_shape']
        extra = torch.tensor([[10.0, 10.0, 10.0, 30.0], [5.0, 20.0, 40.0, 20.0],
                              [30.0, 30.0, 20.0, 40.0], [w + 5.0, 5.0, w + 30.0, h - 5.0]])
        results['gt_bboxes'] = HorizontalBoxes(torch.cat([results['gt_bboxes'].tensor, extra]))
        results['gt_bboxes_labels'] = results['gt_bboxes_labels'].tolist() + [0] * len(extra)
        results['gt_ignore_flags'] = results['gt_ignore_flags'].tolist() + [False] * len(extra)
        for key, dtype in (('gt_bboxes_labels', 'int64'), ('gt_ignore_flags', 'bool')):
            results[key] = torch.tensor(results[key]).numpy().astype(dtype)
        return results


def test_runner_trains_finite_without_sanitize_transform(tmp_path):
    data_root = str(tmp_path / 'data') + '/'
    tiny_data(data_root, num_train=4, num_val=0)
    cfg = tiny_config(data_root, str(tmp_path / 'work'), max_iters=3, ckpt_interval=10,
                      atomic=False)
    pipeline = [t for t in cfg.train_dataloader.dataset.pipeline
                if t['type'] != 'RetinaSanitizeGt']
    assert len(pipeline) == len(cfg.train_dataloader.dataset.pipeline) - 1
    pipeline.insert(-1, dict(type='_InjectDegenerateBoxes'))
    cfg.train_dataloader.dataset.pipeline = pipeline
    cfg.custom_hooks = []  # no non-finite guard: the head alone must keep the loss finite
    for key in ('test_dataloader', 'test_evaluator', 'test_cfg'):
        cfg[key] = None
    runner = Runner.from_cfg(cfg)
    with pytest.warns(UserWarning, match='width or height') as record:
        runner.train()
    named = {str(w.message) for w in record if 'width or height' in str(w.message)}
    assert named and all(
        "img_path='" in m and 'img_id=None' not in m and '/train/' in m for m in named)
    hub = runner.message_hub
    assert hub.get_info('iter') == 2  # every iteration ran
    for key in ('train/loss', 'train/loss_cls', 'train/loss_bbox'):
        values = hub.get_scalar(key).data[0]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())
    assert osp.isdir(runner.work_dir)
