"""Head benchmark: mmdet's RetinaHead vs our RetinaNetHead, same weights, same inputs.

Cases (2 images of 800x1216, COCO's 80 classes, random head outputs):

* ``loss+backward``: ``loss_by_feat`` (targets, focal loss, box loss) plus the backward pass
  into the head outputs, with 8 and 200 gts per image. Both heads as
  ``retinanet_r50_fpn_1x_coco`` configures them (``bench/retinanet_r50.py``); stock: FocalLoss
  + MaxIoUAssigner, ours: RetinaFocalLoss + RetinaIoUAssigner.
* ``predict``: ``predict_by_feat`` (score filter, top-k, decode, NMS, rescale).

Run: ``python -m bench.bench_head [--repeats N]``.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Dict, List, Tuple

import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.structures import InstanceData

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.harness import measure_pair, report
from bench.retinanet_r50 import retinanet_r50_model_cfg

NUM_CLASSES = 80
BATCH_SHAPE = (800, 1216)
IMG_SHAPES = [(800, 1199), (750, 1216)]  # the second image has padding rows
STRIDES = (8, 16, 32, 64, 128)


def build_heads() -> Tuple[torch.nn.Module, torch.nn.Module]:
    """mmdet's ``RetinaHead`` and our ``RetinaNetHead`` with the head, ``train_cfg`` and
    ``test_cfg`` of ``retinanet_r50_fpn_1x_coco`` (:func:`retinanet_r50_model_cfg`), sharing one
    state_dict."""
    heads = []
    for ours in (False, True):
        cfg = retinanet_r50_model_cfg(ours)
        heads.append(MODELS.build(dict(cfg.bbox_head, train_cfg=cfg.train_cfg,
                                       test_cfg=cfg.test_cfg)))
    stock, ours = heads
    ours.load_state_dict(stock.state_dict(), strict=True)
    return stock, ours


def head_outputs(logit_std: float = 1.0, seed: int = 0
                 ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Random logits ``N(-6, logit_std)`` and deltas at 800x1216.

    ``logit_std=1``: ~0.1% of the (anchor, class) pairs score above score_thr=0.05 (~30k
    per batch, still > nms_pre on P3-P4), about what a trained detector gives; 1.5: ~2.1%
    (~600k), a dense stress case.
    """
    g = torch.Generator().manual_seed(seed)
    sizes = [(math.ceil(BATCH_SHAPE[0] / s), math.ceil(BATCH_SHAPE[1] / s)) for s in STRIDES]
    cls = [torch.randn(2, 9 * NUM_CLASSES, h, w, generator=g) * logit_std - 6.0
           for h, w in sizes]
    box = [torch.randn(2, 9 * 4, h, w, generator=g) * 0.3 for h, w in sizes]
    return cls, box


def metas() -> List[Dict]:
    return [dict(img_shape=s, pad_shape=(math.ceil(s[0] / 32) * 32, math.ceil(s[1] / 32) * 32),
                 batch_input_shape=BATCH_SHAPE, ori_shape=(s[0] // 2, s[1] // 2),
                 scale_factor=(2.0, 2.0)) for s in IMG_SHAPES]


def gts(num: int, seed: int) -> List[InstanceData]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in IMG_SHAPES:
        xy = torch.rand(num, 2, generator=g) * torch.tensor([w, h]) * 0.85
        wh = (torch.rand(num, 2, generator=g) * 0.3 + 0.01) * torch.tensor([w, h])
        out.append(InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                labels=torch.randint(0, NUM_CLASSES, (num,), generator=g)))
    return out


def loss_step(head: torch.nn.Module, cls: List[torch.Tensor], box: List[torch.Tensor],
              gt: List[InstanceData], img_metas: List[Dict]) -> Callable[[], None]:
    def run() -> None:
        c = [t.detach().requires_grad_() for t in cls]
        b = [t.detach().requires_grad_() for t in box]
        losses = head.loss_by_feat(c, b, gt, img_metas)
        total = sum(sum(v) if isinstance(v, list) else v for v in losses.values())
        total.backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    register_all_modules()
    torch.manual_seed(0)
    stock, ours = build_heads()
    cls, box = head_outputs()
    img_metas = metas()
    rows = []
    for num in (8, 200):
        gt = gts(num, seed=num)
        rows.append({'case': f'loss+backward 2x800x1216, {num} gts/img',
                     **measure_pair(loss_step(stock, cls, box, gt, img_metas),
                                    loss_step(ours, cls, box, gt, img_metas), args.repeats)})
    for logit_std, density in ((1.0, '~0.1%'), (1.5, '~2.1%')):
        p_cls, p_box = head_outputs(logit_std)
        def predict(head: torch.nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.no_grad():
                    head.predict_by_feat(p_cls, p_box, batch_img_metas=img_metas, rescale=True)
            return run

        rows.append({'case': f'predict 2x800x1216, {density} above thr',
                     **measure_pair(predict(stock), predict(ours), args.repeats)})
    report('bench_head', rows, notes=f'CPU, torch threads={torch.get_num_threads()}')


if __name__ == '__main__':
    main()
