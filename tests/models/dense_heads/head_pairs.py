"""mmdet's RetinaHead and our RetinaNetHead built side by side with one state_dict, and the
inputs the head tests feed both: a padded batch of two images, random gts and head outputs."""
import copy
import math

import torch
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

import mmdet_retina_plugin  # noqa: F401  (registers our modules)

K = 5
C = 16
BATCH_SHAPE = (256, 320)
METAS = [  # image 1 is smaller than the batch: anchors over its padding are invalid
    dict(img_shape=(250, 300), pad_shape=(256, 320), batch_input_shape=BATCH_SHAPE,
         scale_factor=(1.5, 1.25)),
    dict(img_shape=(170, 200), pad_shape=(192, 224), batch_input_shape=BATCH_SHAPE,
         scale_factor=(0.7, 0.9)),
]
TRAIN_CFG = dict(
    assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                  ignore_iof_thr=-1),
    sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
FOCAL = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)


def build_pair(assigner='MaxIoUAssigner', train=None, test=None, ours_only=None,
               stock_type='RetinaHead', **head):
    """mmdet's ``stock_type`` head and ours with the same weights; ours uses ``assigner`` and
    the arguments ``ours_only`` on top of the common ones."""
    train_cfg = ConfigDict(copy.deepcopy(TRAIN_CFG), **(train or {}))
    ours_train = copy.deepcopy(train_cfg)
    ours_train.assigner.type = assigner
    common = dict(num_classes=K, in_channels=C, feat_channels=C, stacked_convs=2,
                  loss_cls=FOCAL, loss_bbox=dict(type='L1Loss', loss_weight=1.0),
                  test_cfg=ConfigDict(TEST_CFG, **(test or {})))
    common.update(head)
    stock = MODELS.build(dict(type=stock_type, train_cfg=train_cfg, **common))
    ours = MODELS.build(dict(common, type='RetinaNetHead', train_cfg=ours_train,
                             **(ours_only or {})))
    stock.init_weights()
    missing, unexpected = ours.load_state_dict(stock.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {'avg_factor_ema'}
    return stock, ours


def random_gts(num, img_shape, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = img_shape
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w, h]) * 0.8
    wh = torch.rand(num, 2, generator=g) * torch.tensor([w, h]) * 0.5 + 4
    return InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                        labels=torch.randint(0, K, (num,), generator=g))


def random_maps(seed=0):
    """Head outputs for the batch: logits around sigmoid ~0.05 and small deltas."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(math.ceil(BATCH_SHAPE[0] / s), math.ceil(BATCH_SHAPE[1] / s))
             for s in (8, 16, 32, 64, 128)]
    cls = [torch.randn(2, 9 * K, h, w, generator=g) * 2 - 3 for h, w in sizes]
    box = [torch.randn(2, 9 * 4, h, w, generator=g) * 0.5 for h, w in sizes]
    return cls, box


def leaf(maps):
    return [m.detach().clone().requires_grad_() for m in maps]


def total(losses):
    """The sum of a loss dict's per-level lists, as mmengine's ``parse_losses`` adds them."""
    return sum(sum(v) for v in losses.values())


def assert_loss_parity(stock, ours, gts, ignores=None):
    cls, box = random_maps()
    s_cls, s_box, o_cls, o_box = leaf(cls), leaf(box), leaf(cls), leaf(box)
    s = stock.loss_by_feat(s_cls, s_box, gts, METAS, ignores)
    o = ours.loss_by_feat(o_cls, o_box, gts, METAS, ignores)
    for k in ('loss_cls', 'loss_bbox'):  # both per-level lists, level by level equal
        assert len(o[k]) == len(s[k]) == len(cls)
        for got, expected in zip(o[k], s[k]):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    total(s).backward()
    total(o).backward()
    for a, b in zip(s_cls + s_box, o_cls + o_box):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4,
                                   atol=1e-4 * a.grad.abs().max().item() + 1e-12)
    return o


def assert_predict_parity(stock, ours, seed=3, channels_last=False, **kwargs):
    """Both heads' ``predict_by_feat`` on the same random maps give the same detections
    (``channels_last``: ours reads the maps in that memory format)."""
    cls, box = random_maps(seed=seed)
    kwargs.setdefault('batch_img_metas', METAS)
    expected = stock.predict_by_feat(cls, box, **kwargs)
    if channels_last:
        cls, box = ([m.contiguous(memory_format=torch.channels_last) for m in maps]
                    for maps in (cls, box))
    got = ours.predict_by_feat(cls, box, **kwargs)
    assert_same_detections(expected, got)


def assert_same_detections(expected, got):
    """The same detections per image, in the same order."""
    assert len(got) == len(expected)
    assert sum(len(r) for r in expected) > 20  # the case is not trivially empty
    for e, g in zip(expected, got):
        assert torch.equal(g.labels, e.labels)
        torch.testing.assert_close(g.bboxes, e.bboxes, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g.scores, e.scores, rtol=1e-4, atol=1e-6)
