"""End-to-end inference: stock mmdet RetinaNet, ours in PyTorch, ours in ONNX Runtime.

End to end = BGR uint8 images in, detections out: the config's test pipeline (resize), the data
preprocessor, the network and post-processing. PyTorch sides run mmdet's test pipeline and
``model.test_step`` on the batch; the ONNX side runs :class:`OnnxRetinaNet.det` on the same
images. Detectors: mmdet's ``retinanet_r50_fpn_1x_coco`` (stock) and ours at parity settings,
sharing one set of random weights (class predictor spread so that post-processing has real work:
see ``tests/deploy/conftest.py``), at 800x1216; and the demo detector (ours and stock) at 160x160.

Also: the network's FLOPs per image (mmengine's ``get_model_complexity_info``, one multiply-add
= 2 FLOPs, direct convolutions) over the time per image, against the fp32 peak of this process
measured with a 4096x4096 ``torch.mm``. The exported graph computes its wide 3x3 convolutions by
Winograd (a quarter of their multiply-adds, ``mmdet_retina_plugin/deploy/winograd.py``), so
ONNX Runtime's share of that peak can exceed 100 %: it is the direct network's FLOPs over its
time.

Run: ``python -m bench.bench_inference [--repeats N] [--batches 1 8] [--cases r50 demo]``.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from mmengine.config import Config

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.harness import measure_pair, report
from bench.retinanet_r50 import spread_scores

REPO = Path(__file__).resolve().parents[1]
CASES = {
    # name: (stock config, our config, image (h, w))
    'r50': ('retinanet/retinanet_r50_fpn_1x_coco.py',  # in mmdet's own configs
            str(REPO / 'configs/retinanet/retina-plugin_r50_fpn_1x_coco.py'), (800, 1216)),
    'demo': (str(REPO / 'configs/demo/retinanet_shapes_stock.py'),
             str(REPO / 'configs/demo/retinanet_shapes.py'), (160, 160)),
}


def _build(config: str, state_dict=None):
    import mmdet
    from mmdet.apis import init_detector
    mmdet_configs = Path(mmdet.__file__).parent / '.mim' / 'configs'
    cfg = Config.fromfile(config if Path(config).is_absolute() else str(mmdet_configs / config))
    cfg.model.backbone.init_cfg = None
    model = init_detector(cfg, None, device='cpu')
    if state_dict is None:
        torch.manual_seed(0)
        model.init_weights()
        spread_scores(model.bbox_head)
    else:
        model.load_state_dict(state_dict, strict=True)
    return cfg, model.eval()


def torch_end_to_end(cfg: Config, model, images: List[np.ndarray]) -> Callable[[], object]:
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate
    pipeline = cfg.test_dataloader.dataset.pipeline.copy()
    pipeline[0] = dict(type='mmdet.LoadImageFromNDArray')
    pipeline = Compose(pipeline)

    def run() -> object:
        data = pseudo_collate([pipeline(dict(img=im, img_id=i)) for i, im in enumerate(images)])
        with torch.no_grad():
            return model.test_step(data)
    return run


def network_flops(model, hw) -> float:
    from mmengine.analysis import get_model_complexity_info

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.bbox_head(self.model.extract_feat(x))

    info = get_model_complexity_info(Net(), input_shape=(3, *hw), show_table=False,
                                     show_arch=False)
    return 2.0 * info['flops']  # mmengine counts multiply-adds


def peak_flops() -> float:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    torch.mm(a, b)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096 ** 3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    from mmdet.utils import register_all_modules

    from mmdet_retina_plugin.deploy import OnnxRetinaNet, export_onnx
    register_all_modules()
    # random weights drive activations into float denormals, which slow torch's CPU kernels
    # (docs/benchmarks.md, Inference); trained weights do not. Flushed to zero here, as ONNX
    # Runtime's kernels do anyway.
    torch.set_flush_denormal(True)
    peak = peak_flops()
    rows: List[Dict[str, object]] = []
    notes = [f'fp32 torch.mm 4096^2 peak {peak / 1e9:.1f} GFLOP/s, '
             f'torch threads={torch.get_num_threads()}']
    tmp = Path(tempfile.mkdtemp(prefix='bench_inference_'))
    for case in args.cases:
        stock_cfg_path, ours_cfg_path, hw = CASES[case]
        stock_cfg, stock = _build(stock_cfg_path)
        ours_cfg, ours = _build(ours_cfg_path, stock.state_dict())
        torch.save(dict(state_dict=ours.state_dict(), meta=dict(dataset_meta=ours.dataset_meta)),
                   tmp / f'{case}.pth')
        onnx_path = export_onnx(ours_cfg, tmp / f'{case}.pth', tmp / f'{case}.onnx',
                                dynamic=True, input_size=hw)
        runner = OnnxRetinaNet(onnx_path)
        flops = network_flops(ours, hw)
        rng = np.random.default_rng(0)
        for batch in args.batches:
            images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(batch)]
            name = f'{case} {hw[0]}x{hw[1]} batch {batch}'
            pt = measure_pair(torch_end_to_end(stock_cfg, stock, images),
                              torch_end_to_end(ours_cfg, ours, images), args.repeats)
            ort = measure_pair(torch_end_to_end(ours_cfg, ours, images),
                               lambda: runner.det(images), args.repeats)
            rows.append({'case': f'{name}: stock vs ours (PyTorch)', **pt})
            rows.append({'case': f'{name}: ours PyTorch vs ONNX Runtime', **ort})
            for side, stats in (('stock', pt['stock']), ('ours', pt['ours']),
                                ('ours-ort', ort['ours'])):
                per_img = stats['median_s'] / batch
                notes.append(f'{name} {side}: {1 / per_img:.2f} img/s, '
                             f'{flops / per_img / peak * 100:.1f} % of peak '
                             f'({flops / 1e9:.1f} GFLOP/img)')
    report('bench_inference', rows, notes)


if __name__ == '__main__':
    main()
