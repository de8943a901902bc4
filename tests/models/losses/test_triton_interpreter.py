"""The Triton focal kernel, tested without a GPU: ``triton_interpreter_sweep.py`` runs it in
Triton's CPU interpreter, in one subprocess so that ``TRITON_INTERPRET=1`` (read when Triton is
imported) reaches no other test. Also the launch budget of a forward + backward on the Triton
path: at most 3 launches (the loss and gradient pass, the sum of its partials, backward's
scaling) and no host synchronisation, whatever the targets, segments or dtype; the scaling is a
Triton launch only for a loss per segment."""
from pathlib import Path

from gpu_compile import ARCHES, compile_for_gpus
from interpreter_sweep import run_interpreter_sweep

SWEEP = Path(__file__).with_name('triton_interpreter_sweep.py')


def test_triton_kernel_under_interpreter_matches_eager_and_mmdet():
    report = run_interpreter_sweep(SWEEP)
    # 3 gammas x 3 weight modes x 2 targets x 3 reductions x gradient or not x 3 dtypes
    assert report['kernel_cases'] == 324
    # 3 gammas x 3 weight modes x 2 targets x 5 incoming gradients x 3 dtypes
    assert report['grad_cases'] == 270
    assert report['column_cases'] == 12  # 2 targets x 3 reductions x gradient or not
    assert report['wide_cases'] == 4
    assert report['block_segment_cases'] == 3
    # 2 targets x 3 dtypes x 3 calls x 2 gammas, all on Triton: the loss kernel with and
    # without gradient; backward scales a 0-d or elementwise loss's gradient with ATen's mul_
    # (a per-segment one with the scaling kernel, in the segment cases)
    assert report['loss_cases'] == 36
    assert report['triton_calls'] == 36 * 2
    assert set(report['launches']) == {'index', 'onehot', 'segments', 'index_bf16'}
    for case, launches in report['launches'].items():
        assert 2 <= launches <= 3, f'{case}: {launches} launches'
        assert report['syncs'][case] == [], f'{case} synchronises: {report["syncs"][case]}'
    assert report['triton_launches'] == {'index': 1, 'onehot': 1, 'segments': 2,
                                         'index_bf16': 1}


def test_kernels_compile_for_cuda_gpus():
    """The GPU build, which the interpreter does not run, for every GPU in ``ARCHES``: every
    compile-time value of both kernels, in every dtype the loss takes."""
    kernels = compile_for_gpus(SWEEP)
    loss, scale = kernels['_focal_kernel'], kernels['_scale_kernel']
    assert loss['arches'] == scale['arches'] == list(ARCHES)
    assert loss['dtypes'] == ['bfloat16', 'float16', 'float32']
    assert loss['constexprs'] == {
        'TARGET': [0, 1], 'W_MODE': [0, 1, 2], 'USE_ALPHA': [False, True],
        'GAMMA_MODE': [0, 1, 2], 'HAS_AVG': [False, True], 'LOSS_MODE': [0, 1, 2],
        'NUM_SEG': [1, 2, 4], 'WIDE_PERIOD': [False, True], 'GRAD_MODE': [0, 1, 2, 3, 4],
        'BLOCK': [1024]}
    assert scale['constexprs'] == {'NUM_SEG': [2, 4], 'WIDE_PERIOD': [False, True],
                                   'BLOCK': [1024]}
