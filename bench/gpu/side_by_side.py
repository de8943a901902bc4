"""Stock mmdet RetinaNet and ours side by side on a GPU: one table, one JSON file.

Both detectors are mmdet's ``retinanet_r50_fpn_1x_coco`` (``bench/retinanet_r50.py``), ours with
the plugin's neck, head, focal loss and assigner, sharing one set of random weights; the
GPU-native configs' model (``configs/retinanet/retina-plugin_r50_fpn_gpu-1x_coco.py`` in fp32,
``..._bf16-1x_coco.py`` in bf16: frozen BN as an affine, channels-last model and batches, pinned
batches copied without blocking) gets rows of its own.
Every pair runs in this one process on the same batches, stock and ours alternated run by run
(``bench/harness.py``: warm-up runs, then the median of ``--repeats``, the GPU synchronised
around each run). Rows:

* ``train``: ``model.train_step`` (data preprocessor, forward, loss, backward, SGD update) on
  800x1216 images: fp32 with 2 images x 8 gts, 8 x 8, 8 x 100, the last two also with the fp32
  GPU config; mmengine's ``AmpOptimWrapper``
  in fp16 and in bf16 (8 images; stock fails in bf16: mmcv's focal-loss op has no bf16 kernel);
  the bf16 config against stock in fp16, and the static-shape config
  (``..._bf16-static-1x_coco.py``: batches padded to 800x1344, backbone, neck and head compiled
  into CUDA graphs) against stock in fp16. Images per second.
* ``focal``: focal loss forward + backward on 2 x 201,600 anchors x 80 classes in fp32, fp16,
  bf16: mmdet's ``FocalLoss`` (mmcv's CUDA op) against ``RetinaFocalLoss``; the note gives a
  clone of the logits (one read and one write, the memory-traffic floor). Milliseconds per
  call, of ``FOCAL_CALLS`` calls issued back to back.
* ``inference``: ``model.test_step`` (preprocessing, network, post-processing with NMS) in fp32
  at batch 1 and 8 (also with the fp32 GPU config and the static-shape config), under bf16
  autocast at batch 8, and the bf16 config. The configs' models are prepared as their hooks
  prepare them when testing starts (the frozen norms folded into their convolutions). Images
  per second.
* ``syncs``: host-device synchronisations per batch of ``loss_by_feat`` and ``predict_by_feat``
  (CUDA's sync debug mode, ``bench/gpu/host_syncs.py``), batch of 8.

``speed-up`` is stock time over ours (> 1: ours faster). A side that raises is reported as
``fails (<exception type>)``, the other side is still timed. After the table, each GPU target
(``bench/gpu/targets.py``: focal loss, training, inference, host syncs) is judged from the rows
as met, not met or not measured, on the screen and in the JSON file.

Run on a GPU machine: ``python -m bench.gpu.side_by_side OUT_DIR`` (or ``bench/gpu/run.sh
OUT_DIR``, which installs the stack first). ``--device cpu --tiny`` runs the same machinery on
small sizes on a CPU (the smoke test); rows needing a GPU say so.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.losses import FocalLoss
from mmdet.registry import HOOKS, MODELS
from mmengine.config import Config
from mmengine.runner import get_priority

import mmdet_retina_plugin  # noqa: F401  (registers our modules)
from bench.bench_focal_loss import fwd_bwd, make_inputs
from bench.bench_train_step import build_pair, make_batch, train_step
from bench.gpu.host_syncs import head_sync_counts
from bench.gpu.targets import verdicts
from bench.harness import machine, measure, measure_pair
from bench.retinanet_r50 import spread_scores
from mmdet_retina_plugin.utils.compiling import forward_compiler

CONFIGS = Path(__file__).resolve().parents[2] / 'configs' / 'retinanet'
GPU_CONFIG = CONFIGS / 'retina-plugin_r50_fpn_gpu-1x_coco.py'
STATIC_CONFIG = CONFIGS / 'retina-plugin_r50_fpn_bf16-static-1x_coco.py'
GROUPS = ('train', 'focal', 'inference', 'syncs')
SHORT = {'float32': 'fp32', 'float16': 'fp16', 'bfloat16': 'bf16'}
Value = Union[float, str, None]
FOCAL_CALLS = 10
GPU_CONFIG_NOTE = 'ours: frozen BN, channels-last, pinned batches'
TEST_NOTE = 'ours: frozen BN folded into the convolutions, channels-last, pinned batches'
STATIC_NOTE = ('ours: the GPU config, batches padded to 800x1344, 100 gts per image, backbone, '
               'neck and head compiled into CUDA graphs')
STATIC_WHY = 'CUDA graphs need a GPU'


@dataclass(frozen=True)
class Sizes:
    """The benchmark's sizes: ``hw`` image ``(H, W)``; ``train`` ``(images, gts per image)`` of
    the fp32 rows; ``batch`` the AMP, inference and sync rows' batch; ``focal_anchors`` the
    focal-loss rows' anchors (80 classes)."""

    hw: Tuple[int, int]
    train: Tuple[Tuple[int, int], ...]
    batch: int
    focal_anchors: int


FULL = Sizes(hw=(800, 1216), train=((2, 8), (8, 8), (8, 100)), batch=8,
             focal_anchors=2 * 201_600)
TINY = Sizes(hw=(64, 96), train=((1, 2), (2, 2), (2, 5)), batch=2, focal_anchors=2_000)


@dataclass
class Row:
    """One line of the table.

    ``stock`` and ``ours`` are numbers in ``unit``, or why there is none (``fails (...)``,
    ``skipped: ...``, ``n/a ...``); ``speedup`` is stock's time over ours' (None where either
    has no number or the unit is a count); ``reference`` a floor in ``unit`` that ours is
    held to (the focal-loss rows: a clone of the logits), or None.
    """

    group: str
    case: str
    unit: str
    stock: Value
    ours: Value
    speedup: Optional[float] = None
    note: str = ''
    reference: Optional[float] = None


@dataclass
class Bench:
    """What every row needs: device, sizes, timing settings, and the models once built."""

    device: torch.device
    sizes: Sizes
    repeats: int
    warmup: int
    models: Optional[Dict[str, torch.nn.Module]] = None
    scores_spread: bool = False

    def model(self, name: str) -> torch.nn.Module:
        """``'stock'``, ``'ours'`` (the same weights), ``'gpu-config'`` (the GPU-native
        configs' model with those weights, channels-last; the bf16 config's is the same) or
        ``'static-config'`` (the static-shape config's: the same with shape buckets, fixed gt
        counts and a compiled head), built on first use."""
        if self.models is None:
            self.models = build_pair(self.device)
            self.models['gpu-config'] = build_gpu_config(self.models['stock'], self.device)
        if name == 'static-config' and name not in self.models:
            self.models[name] = build_gpu_config(self.models['stock'], self.device,
                                                 STATIC_CONFIG)
        return self.models[name]

    def eval_models(self) -> Dict[str, torch.nn.Module]:
        """The three models in eval mode with one set of weights again (the training rows
        updated each its own), class scores spread (:func:`spread_scores`) once for all the
        inference and sync rows."""
        models = {name: self.model(name).eval() for name in ('stock', 'ours', 'gpu-config')}
        if not self.scores_spread:
            spread_scores(models['stock'].bbox_head)
            for name in ('ours', 'gpu-config'):
                models[name].load_state_dict(models['stock'].state_dict(), strict=True)
            start_testing(models['gpu-config'], GPU_CONFIG)
            self.scores_spread = True
        return models


def build_gpu_config(stock: torch.nn.Module, device: torch.device,
                     config: Path = GPU_CONFIG) -> torch.nn.Module:
    """A GPU-native config's model with ``stock``'s weights (loaded strictly: same names),
    its weights channels-last as ``RetinaChannelsLastHook`` makes them in training, and its
    parts compiled as the config's ``RetinaCompileHook`` compiles them."""
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.load_state_dict(stock.state_dict(), strict=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    for hook in cfg.get('custom_hooks', []):
        if hook['type'] == 'RetinaCompileHook':
            HOOKS.build(hook).compile_model(model)
    return model


def start_testing(model: torch.nn.Module, config: Path) -> None:
    """What mmengine's Runner does to the model when testing starts: the ``before_test`` of
    each of ``config``'s hooks, in priority order (the frozen norms folded into their
    convolutions, by ``RetinaFoldFrozenBNHook``). Done once the training rows are over: the
    fold changes the model's state-dict names."""
    cfg = Config.fromfile(str(config))
    hooks = sorted((HOOKS.build(h) for h in cfg.get('custom_hooks', [])),
                   key=lambda h: get_priority(h.priority))
    for hook in hooks:
        hook.before_test(SimpleNamespace(model=model))


def pinned(data: Dict[str, list], device: torch.device) -> Dict[str, list]:
    """``data`` with page-locked images (what ``pin_memory=True`` loaders hand over); as is
    without CUDA."""
    if device.type != 'cuda':
        return data
    return dict(data, inputs=[t.pin_memory() for t in data['inputs']])


def failure(fn: Callable[[], object]) -> Optional[str]:
    """Runs ``fn`` once (also a warm-up): None, or ``'fails (<exception type>)'``."""
    try:
        fn()
    except Exception as e:  # any failure is a result of the row, not of the benchmark
        return f'fails ({type(e).__name__})'
    return None


def timed_row(bench: Bench, group: str, case: str, stock: Callable[[], object],
              ours: Callable[[], object], images: Optional[int] = None,
              note: str = '', calls: int = 1) -> Row:
    """Times ``stock`` and ``ours`` alternately; a side that raises is reported as failing.

    Args:
        bench (Bench): device and timing settings.
        group (str): the row's group (a key of ``ROWS``).
        case (str): the row's name.
        stock (Callable[[], object]): one run of stock mmdet.
        ours (Callable[[], object]): one run of ours, on the same inputs.
        images (int, optional): images per call: the row is in images per second; None: in
            milliseconds per call.
        note (str): shown beside the numbers.
        calls (int): calls each of ``stock`` and ``ours`` makes (milliseconds are per call).

    Returns:
        Row: the medians (or failures) and stock's time over ours.
    """
    errors = {'stock': failure(stock), 'ours': failure(ours)}
    fns = {name: fn for name, fn in (('stock', stock), ('ours', ours)) if errors[name] is None}
    if len(fns) == 2:
        stats = measure_pair(fns['stock'], fns['ours'], bench.repeats, bench.warmup,
                             bench.device)
    else:
        stats = {name: measure(fn, bench.repeats, bench.warmup, bench.device)
                 for name, fn in fns.items()}
    values: Dict[str, Value] = dict(errors)
    for name, s in stats.items():
        values[name] = images / s['median_s'] if images else s['median_s'] * 1e3 / calls
    speedup = (stats['stock']['median_s'] / stats['ours']['median_s']
               if len(stats) == 2 else None)
    return Row(group, case, 'img/s' if images else 'ms', values['stock'], values['ours'],
               speedup, note)


def with_fallbacks(row: Row, model: torch.nn.Module) -> Row:
    """``row``, its note naming the parts of ``model`` that ran eager after their compile
    failed (``RetinaCompileHook``'s backbone and neck, the head's dense work): a compiled
    config timed partly eager says so in the table, not only in a warning."""
    compilers = {name: forward_compiler(getattr(model, name)) for name in ('backbone', 'neck')}
    compilers['head'] = getattr(model.bbox_head, 'dense_compiler', None)
    failed = [name for name, compiler in compilers.items()
              if compiler is not None and compiler.failed]
    if failed:
        row.note += f'; ran eager after a compile failure: {", ".join(failed)}'
    return row


def needs_cuda_row(bench: Bench, group: str, case: str, why: str) -> Optional[Row]:
    """A ``skipped`` row off CUDA, else None (the row is to be measured)."""
    if bench.device.type == 'cuda':
        return None
    return Row(group, case, 'img/s', f'skipped: {why}', f'skipped: {why}')


# ------------------------------------------------------------------------------------- rows
def train_rows(bench: Bench) -> List[Row]:
    hw, n = bench.sizes.hw, bench.sizes.batch
    stock, ours = bench.model('stock').train(), bench.model('ours').train()
    size = f'{hw[0]}x{hw[1]}'
    rows = []
    for images, gts in bench.sizes.train:
        data = make_batch([hw] * images, gts)
        rows.append(timed_row(bench, 'train', f'train step fp32, {images} images {size}, '
                              f'{gts} gts', train_step(stock, data), train_step(ours, data),
                              images))
    config_model = bench.model('gpu-config').train()
    for images, gts in bench.sizes.train[1:]:
        data = make_batch([hw] * images, gts)
        rows.append(timed_row(bench, 'train', f'train step fp32, {images} images {size}, '
                              f'{gts} gts: GPU config', train_step(stock, data),
                              train_step(config_model, pinned(data, bench.device)), images,
                              note=GPU_CONFIG_NOTE))
    data = make_batch([hw] * n, bench.sizes.train[1][1])
    for dtype in ('float16', 'bfloat16'):
        case = f'train step AMP {SHORT[dtype]}, {n} images'
        rows.append(needs_cuda_row(bench, 'train', case, 'AmpOptimWrapper needs a GPU')
                    or timed_row(bench, 'train', case, train_step(stock, data, dtype),
                                 train_step(ours, data, dtype), n))
    case = f'train step AMP, {n} images: stock fp16, bf16 config'
    rows.append(needs_cuda_row(bench, 'train', case, 'AmpOptimWrapper needs a GPU')
                or timed_row(bench, 'train', case, train_step(stock, data, 'float16'),
                             train_step(config_model, pinned(data, bench.device), 'bfloat16'),
                             n, note='ours: bf16, frozen BN, channels-last, pinned batches'))
    case = f'train step AMP, {n} images: stock fp16, bf16 static config'
    static = bench.model('static-config').train() if bench.device.type == 'cuda' else None
    rows.append(needs_cuda_row(bench, 'train', case, STATIC_WHY)
                or with_fallbacks(timed_row(bench, 'train', case,
                                            train_step(stock, data, 'float16'),
                                            train_step(static, pinned(data, bench.device),
                                                       'bfloat16'),
                                            n, note=f'{STATIC_NOTE}; bf16'), static))
    return rows


def focal_inputs(bench: Bench) -> Dict[str, object]:
    """``bench_focal_loss``'s inputs cut to ``bench.sizes.focal_anchors`` anchors (a prefix:
    the same ~1 % positives), on the bench's device."""
    full = make_inputs(device=bench.device.type)
    n = bench.sizes.focal_anchors
    return dict(full, pred=full['pred'][:n], labels=full['labels'][:n],
                weight=full['weight'][:n])


def focal_rows(bench: Bench) -> List[Row]:
    inp = focal_inputs(bench)
    n = bench.sizes.focal_anchors
    stock, ours = FocalLoss(), MODELS.build(dict(type='RetinaFocalLoss'))
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        typed = dict(inp, pred=inp['pred'].to(dtype))
        clone = measure(back_to_back(lambda p=typed['pred']: p.clone()), bench.repeats,
                        bench.warmup, bench.device)['median_s'] * 1e3 / FOCAL_CALLS
        row = timed_row(
            bench, 'focal', f'focal loss fwd+bwd {n:,}x80 {SHORT[str(dtype)[6:]]}',
            back_to_back(fwd_bwd(stock, typed, False)), back_to_back(fwd_bwd(ours, typed, False)),
            note=f'clone of the logits {clone:.3f} ms; '
                 f'{FOCAL_CALLS} calls back to back per run, as a training loop issues them',
            calls=FOCAL_CALLS)
        row.reference = clone
        rows.append(row)
    return rows


def back_to_back(fn: Callable[[], object]) -> Callable[[], None]:
    """``FOCAL_CALLS`` calls of ``fn`` without waiting for the GPU in between: a loss call is
    short, so timing each alone would time the host's launch latency and the final wait."""
    def run() -> None:
        for _ in range(FOCAL_CALLS):
            fn()
    return run


def infer_step(model: torch.nn.Module, data: Dict[str, list],
               autocast: bool = False) -> Callable[[], object]:
    """``model.test_step(data)`` without gradients, optionally under bf16 autocast."""
    device_type = next(model.parameters()).device.type

    def run() -> object:
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16,
                                             enabled=autocast):
            return model.test_step(data)
    return run


def same_detections(stock: Sequence[object], ours: Sequence[object]) -> str:
    """Compares two ``test_step`` outputs image by image, sorted by score: ``'equal'`` (same
    count, scores to 1e-5, labels, boxes to 1e-3 px), ``'equal up to tied scores'`` (only
    detections whose score another one shares differ: which of a tie survives top-k and NMS
    is unspecified in mmcv), or where they differ."""
    ties = False
    for i, (a, b) in enumerate(zip(stock, ours)):
        a, b = a.pred_instances, b.pred_instances
        if len(a) != len(b):
            return f'image {i}: {len(a)} vs {len(b)} detections'
        oa, ob = a.scores.argsort(descending=True), b.scores.argsort(descending=True)
        scores = a.scores[oa]
        if not torch.allclose(scores, b.scores[ob], atol=1e-5):
            return f'image {i}: scores differ'
        differ = (a.labels[oa] != b.labels[ob]) | \
            ~torch.isclose(a.bboxes[oa], b.bboxes[ob], atol=1e-3).all(1)
        tied = torch.zeros_like(differ)
        same = scores[1:] == scores[:-1]
        tied[1:] |= same
        tied[:-1] |= same
        if (differ & ~tied).any():
            return f'image {i}: {int((differ & ~tied).sum())} detections differ'
        ties |= bool(differ.any())
    return 'equal up to tied scores' if ties else 'equal'


def inference_rows(bench: Bench) -> List[Row]:
    hw, n = bench.sizes.hw, bench.sizes.batch
    stock, ours, config_model = bench.eval_models().values()
    rows = []
    for images in sorted({1, n}):
        data = make_batch([hw] * images)
        check = same_detections(infer_step(stock, data)(), infer_step(ours, data)())
        rows.append(timed_row(bench, 'inference', f'inference fp32, batch {images}',
                              infer_step(stock, data), infer_step(ours, data), images,
                              note=f'detections {check}'))
    for images in sorted({1, n}):
        data = make_batch([hw] * images)
        rows.append(timed_row(bench, 'inference', f'inference fp32, batch {images}: GPU config',
                              infer_step(stock, data),
                              infer_step(config_model, pinned(data, bench.device)), images,
                              note=TEST_NOTE))
    if bench.device.type == 'cuda':  # its training rows updated it: the same weights again
        static = bench.model('static-config').eval()
        static.load_state_dict(stock.state_dict(), strict=True)
        start_testing(static, STATIC_CONFIG)
    for images in sorted({1, n}):
        case = f'inference fp32, batch {images}: static config'
        data = make_batch([hw] * images)
        rows.append(needs_cuda_row(bench, 'inference', case, STATIC_WHY)
                    or with_fallbacks(timed_row(bench, 'inference', case,
                                                infer_step(stock, data),
                                                infer_step(static, pinned(data, bench.device)),
                                                images, note=STATIC_NOTE), static))
    data = make_batch([hw] * n)
    rows.append(timed_row(bench, 'inference', f'inference autocast bf16, batch {n}',
                          infer_step(stock, data, True), infer_step(ours, data, True), n))
    rows.append(timed_row(bench, 'inference', f'inference autocast bf16, batch {n}: bf16 config',
                          infer_step(stock, data, True),
                          infer_step(config_model, pinned(data, bench.device), True), n,
                          note=TEST_NOTE))
    return rows


def sync_rows(bench: Bench) -> List[Row]:
    n = bench.sizes.batch
    models = {name: bench.eval_models()[name] for name in ('stock', 'ours')}
    counts = head_sync_counts(models, make_batch([bench.sizes.hw] * n, bench.sizes.train[1][1]))
    # CUDA's debug mode sees CUDA streams only: CPU tensors' syncs are not counted
    cuda = bench.device.type == 'cuda'
    return [Row('syncs', f'host syncs per batch of {n}, {path}', 'syncs',
                *(per[name] if cuda else 'n/a (CUDA only)' for name in ('stock', 'ours')))
            for path, per in counts.items()]


ROWS: Dict[str, Callable[[Bench], List[Row]]] = {
    'train': train_rows, 'focal': focal_rows, 'inference': inference_rows, 'syncs': sync_rows}


# ---------------------------------------------------------------------------------- output
def fmt(value: Value) -> str:
    if isinstance(value, float):
        return f'{value:.3f}' if value < 10 else f'{value:.1f}'
    return str(value)


def table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (what docs/benchmarks.md holds)."""
    lines = ['| case | unit | stock | ours | speed-up | note |', '|---|---|---:|---:|---:|---|']
    for r in rows:
        speedup = f'{r.speedup:.2f}x' if r.speedup is not None else ''
        lines.append(f'| {r.case} | {r.unit} | {fmt(r.stock)} | {fmt(r.ours)} | {speedup} | '
                     f'{r.note} |')
    return '\n'.join(lines)


def write(rows: Sequence[Row], bench: Bench, out_dir: Path) -> Path:
    """Writes ``out_dir/gpu_side_by_side.json`` (rows, sizes, machine, the targets'
    verdicts); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / 'gpu_side_by_side.json'
    path.write_text(json.dumps({
        'name': 'gpu_side_by_side', 'date': datetime.date.today().isoformat(),
        'device': str(bench.device), 'machine': machine(), 'sizes': asdict(bench.sizes),
        'repeats': bench.repeats, 'warmup': bench.warmup,
        'rows': [asdict(r) for r in rows], 'targets': verdicts(rows, bench.sizes)},
        indent=2))
    return path


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir', type=Path, help='folder for gpu_side_by_side.json')
    parser.add_argument('--device', default='cuda', choices=('cuda', 'cpu'))
    parser.add_argument('--tiny', action='store_true', help='small sizes (the CPU smoke test)')
    parser.add_argument('--repeats', type=int, default=10, help='timed runs per side (median)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs per side first')
    parser.add_argument('--groups', nargs='+', default=list(GROUPS), choices=GROUPS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('no CUDA device; `--device cpu --tiny` runs the table machinery on a CPU')
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    args = parse_args(argv)
    bench = Bench(torch.device(args.device), TINY if args.tiny else FULL, args.repeats,
                  args.warmup)
    rows: List[Row] = []
    for group in (g for g in GROUPS if g in args.groups):  # training before the score spread
        try:
            rows += ROWS[group](bench)
        except Exception as e:  # a group that breaks is a result; the next groups still run
            rows.append(Row(group, f'{group} rows', '', f'fails ({type(e).__name__}: {e})',
                            f'fails ({type(e).__name__})'))
        write(rows, bench, args.out_dir)  # what was measured survives a later crash
        print(f'[gpu bench] {group}: {len(rows)} rows so far', flush=True)
    print(f'\n== stock mmdet vs ours, {bench.device} ({machine()}) ==\n{table(rows)}')
    print('\n== against the targets ==\n' + '\n'.join(verdicts(rows, bench.sizes)))
    print(f'-> {write(rows, bench, args.out_dir)}')
    return rows


if __name__ == '__main__':
    main(sys.argv[1:])
