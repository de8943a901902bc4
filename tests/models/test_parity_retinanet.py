"""Detector-level parity: mmdet's stock ``retinanet_r50_fpn_1x_coco`` vs the same config with
our neck, head, focal loss and assigner, sharing one state_dict.

On one padded batch of differently sized images with 0, 1, 8 and 100 gts: equal losses,
gradients, per-anchor assignment and detections. Also: the prior bias survives the
detector-level ``init_weights()`` the Runner calls.
"""
import copy
import math

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.structures import InstanceData

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.retinanet_r50 import retinanet_r50_model_cfg as model_cfg

register_all_modules()

# (h, w) of each image and its gt count; all are padded to one 256x320 batch
IMAGES = [((256, 288), 0), ((224, 320), 1), ((256, 224), 8), ((192, 256), 100)]


@pytest.fixture(scope='module')
def models():
    torch.manual_seed(0)
    stock = MODELS.build(model_cfg(ours=False))
    stock.init_weights()
    ours = MODELS.build(model_cfg(ours=True))
    ours.load_state_dict(stock.state_dict(), strict=True)
    stock.load_state_dict(ours.state_dict(), strict=True)
    # train() applies the backbone's norm_eval (frozen BN statistics) to both
    return stock.train(), ours.train()


@pytest.fixture(scope='module')
def batch(models):
    """DetDataPreprocessor output for IMAGES, with random boxes and labels."""
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for (h, w), n in IMAGES:
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.8
        wh = (torch.rand(n, 2, generator=g) * 0.6 + 0.05) * torch.tensor([w, h])
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h * 2, w * 2),
                                             scale_factor=(0.5, 0.5)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, (xy + wh).minimum(torch.tensor([w, h]))], 1),
            labels=torch.randint(0, 80, (n,), generator=g))
        samples.append(sample)
    data = models[0].data_preprocessor(dict(inputs=inputs, data_samples=samples),
                                       training=True)
    return data['inputs'], data['data_samples']


def stock_gt_inds(head, cls_scores, gts, metas):
    """mmdet's assignment as a ``(B, A)`` map: -1 ignored / invalid, 0 negative, k+1 -> gt k."""
    sizes = [c.shape[-2:] for c in cls_scores]
    anchor_list, flag_list = head.get_anchors(sizes, metas, device='cpu')
    head.get_targets(anchor_list, flag_list, gts, metas)
    out = []
    for flags, res in zip(flag_list, head._raw_positive_infos['sampling_results']):
        flags = torch.cat(flags)
        valid_idx = flags.nonzero()[:, 0]  # sampling indexes the valid anchors only
        inds = torch.full(flags.shape, -1)
        inds[valid_idx[res.neg_inds]] = 0
        inds[valid_idx[res.pos_inds]] = res.pos_assigned_gt_inds + 1
        out.append(inds)
    return torch.stack(out)


def test_neck_outputs_equal(models, batch):
    stock, ours = models
    with torch.no_grad():
        x = stock.backbone(batch[0])
        for a, b in zip(stock.neck(x), ours.neck(x)):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_same_assignment_per_anchor(models, batch):
    stock, ours = models
    inputs, samples = batch
    gts = [s.gt_instances for s in samples]
    metas = [s.metainfo for s in samples]
    with torch.no_grad():
        cls_scores, _ = stock.bbox_head(stock.extract_feat(inputs))
    expected = stock_gt_inds(stock.bbox_head, cls_scores, gts, metas)
    sizes = [c.shape[-2:] for c in cls_scores]
    cache = ours.bbox_head.anchor_cache
    anchors, _ = cache.anchors(sizes, torch.device('cpu'), torch.float32)
    valid = cache.valid_flags(sizes, [m['pad_shape'] for m in metas], 'cpu')
    targets = ours.bbox_head.get_batch_targets(anchors, valid, gts, metas)
    assert torch.equal(targets.gt_inds, expected)
    assert [(row > 0).sum().item() > 0 for row in expected] == [False, True, True, True]


def test_losses_and_gradients_equal(models, batch):
    stock, ours = models
    results = []
    for model in (stock, ours):
        model.train()
        model.zero_grad()
        losses = model.loss(*batch)
        losses = {k: sum(v) if isinstance(v, list) else v for k, v in losses.items()}
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.grad is not None}))
    (s_loss, s_grad), (o_loss, o_grad) = results
    for k in ('loss_cls', 'loss_bbox'):
        torch.testing.assert_close(o_loss[k], s_loss[k], rtol=1e-5, atol=0)
    assert s_grad.keys() == o_grad.keys() and len(s_grad) > 100
    for name, g in s_grad.items():
        torch.testing.assert_close(o_grad[name], g, rtol=1e-4,
                                   atol=1e-4 * g.abs().max().item(), msg=name)


def test_predictions_equal(models, batch):
    stock, ours = models
    inputs, samples = batch
    with torch.no_grad():
        feats = stock.eval().extract_feat(inputs)
    # Random-init logits all sit at the prior (below score_thr) and constant padding gives
    # bitwise-equal scores, whose order mmdet's unstable sort leaves arbitrary: spread the
    # logits (scaled class conv weights) and break padding ties (noise) so NMS, top-k and
    # max_per_img all act on a well-defined order.
    g = torch.Generator().manual_seed(1)
    feats = [f + 0.1 * torch.randn(f.shape, generator=g) for f in feats]
    heads = [copy.deepcopy(m.bbox_head).eval() for m in (stock, ours)]
    for head in heads:
        with torch.no_grad():
            head.retina_cls.weight.mul_(1000.0)  # logit std ~0.002 -> ~2
    with torch.no_grad():
        expected, got = (h.predict(feats, samples, rescale=True) for h in heads)
    assert sum(len(e) == 100 for e in expected) >= 2  # max_per_img reached
    for e, g in zip(expected, got):
        assert len(e) > 0
        assert torch.equal(g.labels, e.labels)
        torch.testing.assert_close(g.bboxes, e.bboxes, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g.scores, e.scores, rtol=1e-4, atol=1e-6)


def test_prior_bias_survives_detector_init():
    """The Runner calls ``model.init_weights()`` on the detector; a detector-level init_cfg
    over every conv must not wipe the head's prior bias."""
    cfg = model_cfg(ours=True)
    cfg.init_cfg = dict(type='Normal', layer='Conv2d', std=1.0, bias=3.0)
    model = MODELS.build(cfg)
    model.init_weights()
    bias = model.bbox_head.retina_cls.bias
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(0.99 / 0.01)))
    assert model.bbox_head.retina_reg.weight.std().item() < 0.02
