"""Images without boxes, and bf16 / fp16 mixed precision, on the tiny plugin RetinaNet."""
import copy

import pytest
import torch
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.optim import OptimWrapper
from mmengine.structures import InstanceData
from tiny_detector import IMAGE_SIZE, tiny_config

import mmdet_retina_plugin  # noqa: F401

register_all_modules(init_default_scope=True)


def build_model():
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(tiny_config().model))
    model.init_weights()
    return model


def batch(with_boxes=(True, False)):
    """Two 64 px images; image i has one box iff with_boxes[i]."""
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i, has in enumerate(with_boxes):
        inputs.append(torch.randint(0, 256, (3, IMAGE_SIZE, IMAGE_SIZE), generator=g,
                                    dtype=torch.uint8))
        s = DetDataSample(metainfo=dict(img_id=i, img_shape=(IMAGE_SIZE, IMAGE_SIZE),
                                        ori_shape=(IMAGE_SIZE, IMAGE_SIZE),
                                        pad_shape=(IMAGE_SIZE, IMAGE_SIZE),
                                        scale_factor=(1.0, 1.0)))
        s.gt_instances = InstanceData(
            bboxes=torch.tensor([[8., 10., 40., 50.]]) if has else torch.zeros(0, 4),
            labels=torch.tensor([2]) if has else torch.zeros(0, dtype=torch.long))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def test_empty_images_give_background_only_loss_equal_to_mmdet():
    """Our head's losses on an all-empty batch: box loss exactly 0, and the class loss equals
    mmdet's RetinaHead.loss_by_feat evaluated on the same head outputs."""
    model = build_model()
    data = model.data_preprocessor(batch((False, False)), training=True)
    feats = model.extract_feat(data['inputs'])
    cls_scores, bbox_preds = model.bbox_head(feats)
    gts = [s.gt_instances for s in data['data_samples']]
    metas = [s.metainfo for s in data['data_samples']]
    ours = model.bbox_head.loss_by_feat(cls_scores, bbox_preds, gts, metas)

    head_cfg = copy.deepcopy(tiny_config().model.bbox_head)
    head_cfg.update(type='RetinaHead', loss_cls=dict(type='FocalLoss', use_sigmoid=True,
                                                     gamma=2.0, alpha=0.25, loss_weight=1.0),
                    train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5,
                                                 neg_iou_thr=0.4, min_pos_iou=0.0),
                                   sampler=dict(type='PseudoSampler'), allowed_border=-1,
                                   pos_weight=-1, debug=False))
    for k in ('prior_prob',):
        head_cfg.pop(k, None)
    stock = MODELS.build(head_cfg).loss_by_feat(cls_scores, bbox_preds, gts, metas)

    total = {k: sum(v) if isinstance(v, list) else v for k, v in ours.items()}
    ref = {k: sum(v) if isinstance(v, list) else v for k, v in stock.items()}
    assert total['loss_bbox'].item() == 0.0
    assert torch.isfinite(total['loss_cls']) and total['loss_cls'].item() > 0
    torch.testing.assert_close(total['loss_cls'], ref['loss_cls'], rtol=1e-5, atol=1e-6)
    (total['loss_cls'] + total['loss_bbox']).backward()  # gradients exist and are finite
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_mixed_batch_trains_finite():
    model = build_model()
    losses = model(**model.data_preprocessor(batch((True, False)), training=True),
                   mode='loss')
    for v in losses.values():
        assert all(torch.isfinite(x).all() for x in (v if isinstance(v, list) else [v]))


def test_bf16_autocast_training_steps_on_cpu():
    """mmengine's AmpOptimWrapper requires CUDA, so the CPU test runs its recipe by hand:
    autocast(bf16) around preprocessing + forward, fp32 master weights in OptimWrapper."""
    model = build_model()
    ref_model = copy.deepcopy(model)
    ow = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    data = batch((True, False))
    for step in range(3):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            losses = model(**model.data_preprocessor(copy.deepcopy(data), training=True),
                           mode='loss')
        loss, _ = model.parse_losses(losses)
        assert torch.isfinite(loss), f'step {step}: {losses}'
        if step == 0:  # bf16 forward agrees with fp32 to bf16 precision
            fp32, _ = ref_model.parse_losses(
                ref_model(**ref_model.data_preprocessor(copy.deepcopy(data), True), mode='loss'))
            torch.testing.assert_close(loss.float(), fp32, rtol=5e-2, atol=5e-2)
        ow.update_params(loss)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters())]
    assert sum(changed) > len(changed) // 2


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_focal_loss_finite_for_extreme_logits(dtype):
    """Saturated logits (|x| up to 1e4, beyond fp16's exp range) give finite losses and grads,
    equal to mmdet's fp64 reference computed on the same (rounded) logits."""
    loss_fn = MODELS.build(dict(type='RetinaFocalLoss', gamma=2.0, alpha=0.25,
                                reduction='sum'))
    logits = torch.tensor([[-1e4, 1e4, -60.], [60., -30., 30.], [0., 11., -11.]], dtype=dtype,
                          requires_grad=True)
    labels = torch.tensor([1, 3, 0])  # 3 = background (K = 3 classes)
    loss = loss_fn(logits, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    one_hot = torch.nn.functional.one_hot(labels, 4)[:, :3].double()
    ref = py_sigmoid_focal_loss(logits.detach().double(), one_hot, gamma=2.0, alpha=0.25,
                                reduction='sum')
    torch.testing.assert_close(loss.double(), ref, rtol=2e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='AmpOptimWrapper(fp16) needs CUDA')
def test_fp16_amp_optim_wrapper_on_gpu():
    from mmengine.optim import AmpOptimWrapper
    model = build_model().cuda()
    ow = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                         dtype='float16')
    data = batch((True, False))
    for _ in range(3):
        with ow.optim_context(model):
            losses = model(**model.data_preprocessor(copy.deepcopy(data), training=True),
                           mode='loss')
        loss, _ = model.parse_losses(losses)
        assert torch.isfinite(loss)
        ow.update_params(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
