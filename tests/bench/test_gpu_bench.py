"""bench/gpu: the side-by-side table's machinery on a CPU at tiny sizes, the failure and
timing bookkeeping, and (with CUDA) the host-sync counter."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu import host_syncs, side_by_side, targets
from bench.gpu.side_by_side import Bench, Row, timed_row

REPO = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp('gpu_bench')
    rows = side_by_side.main([str(out), '--device', 'cpu', '--tiny', '--repeats', '1',
                              '--warmup', '0'])
    return rows, json.loads((out / 'gpu_side_by_side.json').read_text())


def test_every_row_of_the_table_on_cpu(tiny_run, capsys):
    rows, report = tiny_run
    cases = [r.case for r in rows]
    assert [r.group for r in rows] == ['train'] * 9 + ['focal'] * 3 + ['inference'] * 8 + \
        ['syncs'] * 2
    assert cases[:5] == ['train step fp32, 1 images 64x96, 2 gts',
                         'train step fp32, 2 images 64x96, 2 gts',
                         'train step fp32, 2 images 64x96, 5 gts',
                         'train step fp32, 2 images 64x96, 2 gts: GPU config',
                         'train step fp32, 2 images 64x96, 5 gts: GPU config']
    assert [c[-4:] for c in cases[9:12]] == ['fp32', 'fp16', 'bf16']
    assert cases[12:18] == ['inference fp32, batch 1', 'inference fp32, batch 2',
                            'inference fp32, batch 1: GPU config',
                            'inference fp32, batch 2: GPU config',
                            'inference fp32, batch 1: static config',
                            'inference fp32, batch 2: static config']
    assert 'predict_by_feat' in cases[-1] and 'loss_by_feat' in cases[-2]
    for r in rows:
        numbers = [v for v in (r.stock, r.ours) if isinstance(v, float)]
        assert all(v > 0 for v in numbers), r
        if len(numbers) == 2:  # speed-up: stock's time over ours, from the same medians
            expected = r.ours / r.stock if r.unit == 'img/s' else r.stock / r.ours
            assert r.speedup == pytest.approx(expected, rel=1e-9), r
        else:
            assert r.speedup is None, r
    # fp32 training (the GPU config's too), the focal loss and fp32 inference run on any
    # device, side by side
    assert all(isinstance(r.stock, float) and isinstance(r.ours, float)
               for r in rows[:5] + rows[9:16])
    assert all(r.note.startswith('clone of the logits') for r in rows[9:12])
    # AMP needs mmengine's AmpOptimWrapper, which needs a GPU; syncs need CUDA's debug mode
    assert all(r.stock == r.ours == 'skipped: AmpOptimWrapper needs a GPU' for r in rows[5:8])
    # the static-shape config's rows replay CUDA graphs
    assert all(r.stock == r.ours == 'skipped: CUDA graphs need a GPU'
               for r in rows[8:9] + rows[16:18])
    assert all(r.stock == r.ours == 'n/a (CUDA only)' for r in rows[-2:])
    # ours in bf16 on the CPU: inference runs (stock's may fail in mmcv's CPU ops)
    assert isinstance(rows[18].ours, float) and isinstance(rows[19].ours, float)
    assert report['rows'] == [dict(r.__dict__) for r in rows]
    assert report['device'] == 'cpu' and report['sizes']['hw'] == [64, 96]


def test_the_targets_are_judged_from_the_rows(tiny_run):
    rows, report = tiny_run
    lines = report['targets']
    assert lines == targets.verdicts(rows, side_by_side.TINY)
    assert len(lines) == len(targets.gpu_targets(side_by_side.TINY)) == 11
    verdict = {t.name: line[:12].strip() for t, line in
               zip(targets.gpu_targets(side_by_side.TINY), lines)
               if line[13:].startswith(t.name + ': ')}
    assert len(verdict) == 11
    # measured on any device: the focal loss, fp32 training and inference
    for name in ("focal loss fwd+bwd fp32 >= 2x mmcv's op",
                 'focal loss fwd+bwd fp32 <= 3x a clone of the logits',
                 'focal loss fwd+bwd in bf16 runs', 'train step fp32, 2 images, 2 gts >= 1.5x',
                 'inference fp32, batch 1 >= 1.3x', 'inference fp32, batch 2 >= 1.5x'):
        assert verdict[name] in ('met', 'not met'), lines
    assert verdict['focal loss fwd+bwd in bf16 runs'] == 'met'
    # AMP and sync counts need a GPU
    for name in ("train step bf16 >= 2x stock's AMP fp16, 2 images",
                 'host syncs of loss_by_feat per batch: 0'):
        assert verdict[name] == 'not measured', lines
    assert 'skipped: AmpOptimWrapper needs a GPU' in lines[5]


def test_a_target_is_met_by_the_best_of_its_rows():
    sizes = side_by_side.FULL
    batch_1 = next(t for t in targets.gpu_targets(sizes) if t.name.startswith(
        'inference fp32, batch 1'))
    rows = [Row('inference', 'inference fp32, batch 1', 'img/s', 50.0, 49.0, 0.98),
            Row('inference', 'inference fp32, batch 1: GPU config', 'img/s', 50.0, 60.0, 1.2),
            Row('inference', 'inference fp32, batch 8', 'img/s', 90.0, 200.0, 2.2)]
    assert targets.judge(batch_1, rows) == (
        'not met', '1.20x, ours 60 img/s (inference fp32, batch 1: GPU config)')
    rows.append(Row('inference', 'inference fp32, batch 1: static config', 'img/s', 50.0,
                    80.0, 1.6))
    assert targets.judge(batch_1, rows)[0] == 'met'
    assert '1.60x' in targets.judge(batch_1, rows)[1]
    skipped = [Row('inference', 'inference fp32, batch 1', 'img/s', 'fails (RuntimeError)',
                   'fails (RuntimeError)')]
    assert targets.judge(batch_1, skipped) == ('not measured', 'fails (RuntimeError)')
    assert targets.judge(batch_1, []) == ('not measured', 'no such row in this run')


def test_the_focal_floor_and_the_sync_counts():
    sizes = side_by_side.FULL
    by_name = {t.name: t for t in targets.gpu_targets(sizes)}
    floor = by_name['focal loss fwd+bwd fp32 <= 3x a clone of the logits']
    row = Row('focal', 'focal loss fwd+bwd 403,200x80 fp32', 'ms', 1.0, 0.3, 3.3,
              reference=0.087)
    assert targets.judge(floor, [row])[0] == 'not met'  # 3.4x the clone
    row.reference = 0.1
    assert targets.judge(floor, [row])[0] == 'met'
    assert by_name["focal loss fwd+bwd fp32 >= 2x mmcv's op"].check(row) is True
    row.speedup = 1.67
    assert by_name["focal loss fwd+bwd fp32 >= 2x mmcv's op"].check(row) is False
    loss_syncs = by_name['host syncs of loss_by_feat per batch: 0']
    predict_syncs = by_name['host syncs of predict_by_feat per batch: <= 2']
    counted = [Row('syncs', 'host syncs per batch of 8, loss_by_feat', 'syncs', 231, 0),
               Row('syncs', 'host syncs per batch of 8, predict_by_feat', 'syncs', 125, 3)]
    assert targets.judge(loss_syncs, counted)[0] == 'met'
    assert targets.judge(predict_syncs, counted)[0] == 'not met'


def test_a_compiled_part_run_eager_is_named_in_the_note():
    """A part of the static config whose compile failed runs eager: its rows say which."""
    from types import SimpleNamespace

    from mmdet_retina_plugin.utils.compiling import Compiler, compile_forward

    model = SimpleNamespace(backbone=torch.nn.Identity(), neck=torch.nn.Identity(),
                            bbox_head=SimpleNamespace(dense_compiler=Compiler({})))
    for name in ('backbone', 'neck'):
        compile_forward(getattr(model, name), Compiler({}))
    row = Row('inference', 'inference fp32, batch 1: static config', 'img/s', 1.0, 2.0, 2.0,
              note='ours: compiled')
    assert side_by_side.with_fallbacks(row, model).note == 'ours: compiled'
    model.neck.forward.compiler.failed = model.bbox_head.dense_compiler.failed = True
    assert side_by_side.with_fallbacks(row, model).note == \
        'ours: compiled; ran eager after a compile failure: neck, head'


def test_kernel_profile_reports_every_hot_path_on_cpu(tmp_path, one_torch_thread):
    """The kernel profile's machinery at tiny sizes on the CPU: every case, both sides, with
    their numbers (no CUDA: no launches, syncs or GPU time to count), written to the file."""
    from bench.gpu import kernel_profile

    text = kernel_profile.main([str(tmp_path), '--device', 'cpu', '--tiny'])
    assert (tmp_path / 'kernel_profile.txt').read_text().strip() == text.strip()
    blocks = text.split('\n\n')
    heads = [b.splitlines()[0] for b in blocks]
    assert [h.rsplit(' -- ', 1)[1] for h in heads] == ['stock', 'ours'] * 5
    assert heads[0].startswith('focal loss fwd+bwd fp32')
    assert heads[-1] == 'inference fp32, batch 1 (ours: GPU config) -- ours'
    for block in blocks:
        wall = block.splitlines()[1].split()
        assert wall[0] == 'wall' and float(wall[1]) > 0, block
        assert ' 0 launches, 0 syncs' in block, block


def test_table_lists_every_row():
    rows = [Row('train', 'a', 'img/s', 2.0, 4.0, 2.0), Row('train', 'b', 'img/s',
                                                            'fails (RuntimeError)', 103.5)]
    text = side_by_side.table(rows).splitlines()
    assert text[2] == '| a | img/s | 2.000 | 4.000 | 2.00x |  |'
    assert text[3] == '| b | img/s | fails (RuntimeError) | 103.5 |  |  |'


def test_a_failing_side_is_reported_and_the_other_still_timed():
    calls = []

    def stock():
        raise NotImplementedError('no bf16 kernel')

    bench = Bench(torch.device('cpu'), side_by_side.TINY, repeats=2, warmup=1)
    row = timed_row(bench, 'train', 'x', stock, lambda: calls.append(1), images=4)
    assert row.stock == 'fails (NotImplementedError)' and row.speedup is None
    assert isinstance(row.ours, float) and row.ours > 0
    assert len(calls) == 1 + 1 + 2  # the probing call, warm-up, timed runs
    row = timed_row(bench, 'focal', 'y', lambda: None, lambda: None)
    assert row.unit == 'ms' and row.speedup is not None


def test_refuses_cuda_without_a_gpu_and_helps():
    if CUDA:
        pytest.skip('a GPU is present')
    with pytest.raises(SystemExit):
        side_by_side.main(['/tmp/unused'])
    out = subprocess.run([sys.executable, '-m', 'bench.gpu.side_by_side', '--help'], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0 and '--tiny' in out.stdout
    assert host_syncs.count_host_syncs(lambda: None) is None


@pytest.mark.skipif(CUDA, reason='with a GPU, run.sh runs the whole benchmark')
def test_run_sh_without_a_gpu_says_what_is_missing(tmp_path):
    out = subprocess.run(['bash', str(REPO / 'bench/gpu/run.sh'), str(tmp_path / 'o')],
                         capture_output=True, text=True, cwd=tmp_path,
                         env={'PATH': '/usr/bin:/bin', 'PYTHON': sys.executable,
                              'GPU_WHEELS': str(tmp_path / 'none')})
    # this interpreter has the stack: it gets as far as looking for a GPU
    assert out.returncode == 2 and 'torch sees no CUDA device' in out.stderr
    usage = subprocess.run(['bash', str(REPO / 'bench/gpu/run.sh')], capture_output=True,
                           text=True)
    assert usage.returncode == 2 and 'OUT_DIR' in usage.stdout


@pytest.mark.skipif(not CUDA, reason='CUDA sync debug mode')
def test_host_sync_counter_counts_syncing_ops():
    x = torch.arange(10, device='cuda')
    assert host_syncs.count_host_syncs(lambda: x * 2) == 0
    assert host_syncs.count_host_syncs(lambda: x.sum().item()) == 1
    assert host_syncs.count_host_syncs(lambda: (x[x > 4].sum().item(), x.cpu())) >= 3
