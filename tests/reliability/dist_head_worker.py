"""torchrun worker for test_dist_utils: RetinaNetHead losses with and without sync_avg_factor.

Usage: ``torchrun ... dist_head_worker.py OUT_DIR``. Each rank gets a different number of gts
and writes ``OUT_DIR/rank{R}.json``: its own ``avg_factor`` and the losses of both heads (same
weights, same inputs).
"""
import json
import os.path as osp
import sys

import torch
import torch.distributed as dist
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData

import mmdet_retina_plugin  # noqa: F401


def build(sync: bool) -> torch.nn.Module:
    return MODELS.build(dict(
        type='RetinaNetHead', num_classes=3, in_channels=8, stacked_convs=1, feat_channels=8,
        sync_avg_factor=sync,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=1,
                              ratios=[1.0], strides=[8, 16]),
        train_cfg=ConfigDict(assigner=dict(type='RetinaIoUAssigner', pos_iou_thr=0.5,
                                           neg_iou_thr=0.4, min_pos_iou=0),
                             allowed_border=-1, pos_weight=-1)))


if __name__ == '__main__':
    dist.init_process_group('gloo')
    register_all_modules()
    rank = dist.get_rank()
    torch.manual_seed(0)
    local, synced = build(False), build(True)
    synced.load_state_dict(local.state_dict())
    g = torch.Generator().manual_seed(rank)
    feats = [torch.randn(1, 8, 8, 8, generator=g), torch.randn(1, 8, 4, 4, generator=g)]
    num_gts = 1 + 5 * rank  # rank 0: 1 gt, rank 1: 6 gts
    xy = torch.rand(num_gts, 2, generator=g) * 32
    wh = 24 + torch.rand(num_gts, 2, generator=g) * 8
    gts = [InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                        labels=torch.randint(0, 3, (num_gts,), generator=g))]
    metas = [dict(img_shape=(64, 64), pad_shape=(64, 64))]
    out = {'rank': rank}
    for name, head in (('local', local), ('sync', synced)):
        cls, box = head(feats)
        losses = head.loss_by_feat(cls, box, gts, metas)
        out[name] = {k: float(sum(v)) for k, v in losses.items()}  # per-level lists
    sizes = [f.shape[-2:] for f in feats]
    anchors, _ = local.anchor_cache.anchors(sizes, torch.device('cpu'), torch.float32)
    valid = local.anchor_cache.valid_flags(sizes, [m['pad_shape'] for m in metas], 'cpu')
    out['local_avg'] = local.get_batch_targets(anchors, valid, gts, metas).avg_factor.item()
    with open(osp.join(sys.argv[1], f'rank{rank}.json'), 'w') as f:
        json.dump(out, f)
    dist.destroy_process_group()
