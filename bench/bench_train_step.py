"""Full training-step benchmark: stock ``retinanet_r50_fpn_1x_coco`` vs the same config with our
neck, head, focal loss and assigner; same initial weights, same batch.

One step = ``model.train_step`` as mmengine's loop runs it (data preprocessor, forward, loss,
backward, SGD update) on 2 images of 800x1216 with 8 gts each.

Run: ``python -m bench.bench_train_step [--repeats N]``.
"""
from __future__ import annotations

import argparse
import copy
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.structures import InstanceData

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.harness import measure_pair, report
from bench.retinanet_r50 import retinanet_r50_model_cfg as model_cfg

IMG_SHAPES = [(800, 1216), (800, 1066)]
NUM_GTS = 8


def make_batch(img_shapes: Sequence[Tuple[int, int]] = IMG_SHAPES,
               num_gts: int = NUM_GTS) -> Dict[str, list]:
    """Random uint8 images ``(3, H, W)`` with ``num_gts`` random boxes each (labels in
    [0, 80)), as mmdet's dataloader hands them to ``train_step``."""
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for h, w in img_shapes:
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        xy = torch.rand(num_gts, 2, generator=g) * torch.tensor([w, h]) * 0.8
        wh = (torch.rand(num_gts, 2, generator=g) * 0.3 + 0.02) * torch.tensor([w, h])
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([xy, xy + wh], 1),
            labels=torch.randint(0, 80, (num_gts,), generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def train_step(model: torch.nn.Module, data: Dict[str, list],
               amp_dtype: Optional[str] = None) -> Callable[[], None]:
    """``model.train_step`` with SGD; ``amp_dtype`` (``'float16'``, ``'bfloat16'``) uses
    mmengine's ``AmpOptimWrapper`` (autocast in that dtype, a GPU only)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    wrapper = (OptimWrapper(optimizer) if amp_dtype is None
               else AmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype))

    def run() -> None:
        model.train_step(copy.copy(data), wrapper)
    return run


def build_pair(device: Union[str, torch.device]) -> Dict[str, torch.nn.Module]:
    """Stock mmdet R50 RetinaNet and ours with stock's random weights, on ``device``."""
    register_all_modules()
    torch.manual_seed(0)
    stock = MODELS.build(model_cfg(ours=False))
    stock.init_weights()
    ours = MODELS.build(model_cfg(ours=True))
    ours.load_state_dict(stock.state_dict(), strict=True)
    return {'stock': stock.to(device), 'ours': ours.to(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    # on a GPU machine both train there (the data preprocessor moves the batch)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    models = build_pair(device)
    stock, ours = models['stock'], models['ours']
    data = make_batch()
    rows = [{'case': f'train_step R50 2x800x1216, {NUM_GTS} gts/img',
             **measure_pair(train_step(stock.train(), data), train_step(ours.train(), data),
                            args.repeats, device=device)}]
    report('bench_train_step', rows, notes=f'{device}, torch threads={torch.get_num_threads()}')


if __name__ == '__main__':
    main()
