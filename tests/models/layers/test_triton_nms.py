"""The Triton greedy-NMS kernel, tested without a GPU: ``triton_nms_sweep.py`` runs it in
Triton's CPU interpreter, in one subprocess so that ``TRITON_INTERPRET=1`` (read when Triton is
imported) reaches no other test, and compiles it for CUDA GPUs."""
from pathlib import Path

import pytest
import torch
from gpu_compile import ARCHES, compile_for_gpus
from interpreter_sweep import run_interpreter_sweep

SWEEP = Path(__file__).with_name('triton_nms_sweep.py')


# where CUDA is, test_batched_nms runs the kernel itself against mmcv's CUDA kernel, and the
# interpreter, which runs the kernel's one-program-per-group grid program by program on the
# host, did not finish there within minutes
@pytest.mark.skipif(torch.cuda.is_available(),
                    reason='CUDA present: the kernel runs on the GPU in test_batched_nms')
def test_triton_kernel_under_interpreter_matches_rounds_and_mmcv():
    report = run_interpreter_sweep(SWEEP)
    # 2 IoU tests x 2 offsets x 2 bounds on kept boxes
    assert report['kernel_cases'] == 8
    # 3 NMS configs, each one batched call through the kernel
    assert report['end_to_end_cases'] == 3
    assert report['triton_calls'] == 3


def test_kernel_compiles_for_cuda_gpus():
    """The GPU build, which the interpreter does not run, for every GPU in ``ARCHES`` and both
    IoU tests, without a fused multiply-add: the IoU rounds as mmcv's kernels round it."""
    kernel = compile_for_gpus(SWEEP)['_greedy_group_kernel']
    assert kernel['fused_multiply_adds'] == 0
    assert kernel['arches'] == list(ARCHES)
    assert kernel['dtypes'] == ['float32']
    assert kernel['constexprs'] == {'CUDA_RULE': [False, True], 'BLOCK': [128]}


def test_the_kernel_is_the_only_launch_besides_its_group_bounds(monkeypatch):
    """On a GPU every op is a launch the host pays for: around the kernel, greedy_triton issues
    the group bounds' two ops and allocations only (the kernel sets its own flags)."""
    triton_nms = pytest.importorskip('mmdet_retina_plugin.models.layers._triton_nms')
    launches = []

    class Recorded:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(grid)

    monkeypatch.setattr(triton_nms, '_greedy_group_kernel', Recorded())
    boxes = torch.rand(6, 4)
    segment = torch.tensor([0, 0, 0, 1, 2, 2])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        kept = triton_nms.greedy_triton(boxes, segment, 5, 0.5, 0, True)
    top = [e.name for e in prof.events() if e.name.startswith('aten::')
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::'))]
    allocations = {'aten::empty', 'aten::view', 'aten::contiguous'}
    assert [n for n in top if n not in allocations] == ['aten::arange', 'aten::searchsorted']
    assert launches == [(6,)] and kept.dtype == torch.bool and kept.shape == (6,)
