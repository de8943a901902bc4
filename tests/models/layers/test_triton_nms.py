"""The Triton greedy-NMS kernel, tested without a GPU: ``triton_nms_sweep.py`` runs it in
Triton's CPU interpreter, in one subprocess so that ``TRITON_INTERPRET=1`` (read when Triton is
imported) reaches no other test."""
from pathlib import Path

import pytest
import torch
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
