"""mmdet 3.x's ``tests/test_models/test_dense_heads/test_anchor_head.py`` adapted to our type
names: ``RetinaNetHead`` for ``AnchorHead``, ``RetinaIoUAssigner`` for ``MaxIoUAssigner`` and
``PseudoSampler`` for ``RandomSampler`` (our head trains on every anchor); also with RetinaNet's
losses (``RetinaFocalLoss`` + ``L1Loss``). The losses come as per-level lists, as mmdet's heads
return them, and the test iterates over them."""
import pytest
import torch
from mmengine import Config
from mmengine.structures import InstanceData

from mmdet_retina_plugin.models.dense_heads import RetinaNetHead

LOSSES = {
    'mmdet_defaults': {},  # CrossEntropyLoss(use_sigmoid=True) + SmoothL1Loss
    'retinanet': dict(loss_cls=dict(type='RetinaFocalLoss', gamma=2.0, alpha=0.25),
                      loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
}


@pytest.mark.parametrize('losses', sorted(LOSSES))
def test_anchor_head_loss(losses):
    """Tests anchor head loss when truth is empty and non-empty."""
    s = 256
    img_metas = [{
        'img_shape': (s, s, 3),
        'pad_shape': (s, s, 3),
        'scale_factor': 1,
    }]
    cfg = Config(
        dict(
            assigner=dict(
                type='RetinaIoUAssigner',
                pos_iou_thr=0.7,
                neg_iou_thr=0.3,
                min_pos_iou=0.3,
                match_low_quality=True,
                ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'),
            allowed_border=0,
            pos_weight=-1,
            debug=False))
    anchor_head = RetinaNetHead(num_classes=4, in_channels=1, feat_channels=8, train_cfg=cfg,
                                **LOSSES[losses])
    num_levels = len(anchor_head.prior_generator.strides)

    # Anchor head expects a multiple levels of features per image
    feats = (
        torch.rand(1, 1, s // (2**(i + 2)), s // (2**(i + 2)))
        for i in range(num_levels))
    cls_scores, bbox_preds = anchor_head.forward(feats)

    # Test that empty ground truth encourages the network to
    # predict background
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.empty((0, 4))
    gt_instances.labels = torch.LongTensor([])

    empty_gt_losses = anchor_head.loss_by_feat(cls_scores, bbox_preds,
                                               [gt_instances], img_metas)
    assert [len(v) for v in empty_gt_losses.values()] == [num_levels] * 2
    # When there is no truth, the cls loss should be nonzero but
    # there should be no box loss.
    empty_cls_loss = sum(empty_gt_losses['loss_cls'])
    empty_box_loss = sum(empty_gt_losses['loss_bbox'])
    assert empty_cls_loss.item() > 0, 'cls loss should be non-zero'
    assert empty_box_loss.item() == 0, (
        'there should be no box loss when there are no true boxes')

    # When truth is non-empty then both cls and box loss
    # should be nonzero for random inputs
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.Tensor(
        [[23.6667, 23.8757, 238.6326, 151.8874]])
    gt_instances.labels = torch.LongTensor([2])

    one_gt_losses = anchor_head.loss_by_feat(cls_scores, bbox_preds,
                                             [gt_instances], img_metas)
    assert [len(v) for v in one_gt_losses.values()] == [num_levels] * 2
    onegt_cls_loss = sum(one_gt_losses['loss_cls'])
    onegt_box_loss = sum(one_gt_losses['loss_bbox'])
    assert onegt_cls_loss.item() > 0, 'cls loss should be non-zero'
    assert onegt_box_loss.item() > 0, 'box loss should be non-zero'
