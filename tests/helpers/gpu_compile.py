"""Compiles the plugin's Triton kernels for CUDA GPUs on a machine without one.

The interpreter sweeps run a kernel's arithmetic on the CPU, but not what only a GPU build does:
Triton's lowering to PTX and ptxas's assembly of it (libdevice calls, barriers, compile options
such as ``enable_fp_fusion``, the branches taken only when not interpreted). Triton ships its
own ptxas, so a launch can be compiled for any compute capability without a GPU: a stand-in
driver reports the target, and every launch is made as Triton's ``warmup`` (compile, no run).
A sweep script's cases function makes the calls through the plugin's own launch code (whose
output tensors then hold no results), once per compute capability in ``ARCHES``.

``compile_for_gpus(script)`` runs ``script``'s ``gpu_compile_cases()`` so, in a subprocess
(the stand-in driver and the patched launch reach no other test), with a cache directory of its
own (every kernel is really compiled). Run as a script, this file is that subprocess.
"""
import json
import os
import runpy
import sys
import tempfile
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from interpreter_sweep import script_report

# Turing (T4), Ampere (A100, RTX 30), Ada (L4, RTX 40), Hopper (H100, H200), Blackwell (B200,
# RTX 50): the GPUs detection models are trained on
ARCHES = (75, 80, 86, 89, 90, 100, 120)
# launch keywords that are compile options, not the kernel's constexprs
OPTIONS = {'num_warps', 'num_stages', 'num_ctas', 'enable_fp_fusion', 'debug'}


def compile_for_gpus(script: Path) -> Dict[str, dict]:
    """Compiles what ``script``'s ``gpu_compile_cases()`` launches for every GPU in ``ARCHES``;
    skips the test where Triton does not import.

    Args:
        script (Path): a file defining ``gpu_compile_cases()``, which launches kernels
            through the plugin's code on CPU tensors.

    Returns:
        dict: per kernel name, ``{"arches": [compute capabilities it compiled for],
        "constexprs": {name: [values compiled]}, "dtypes": [dtypes of its first argument],
        "fused_multiply_adds": the most FMA instructions in one build's PTX}``, after asserting
        that every launch compiled for every GPU.
    """
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    with tempfile.TemporaryDirectory() as cache:
        env['TRITON_CACHE_DIR'] = cache
        return script_report([__file__, str(script)], env)['kernels']


def _compile_all(script: str) -> dict:
    """In the subprocess: runs the cases once per GPU, recording what was compiled."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.runtime import driver
        from triton.runtime.jit import JITFunction
    except ImportError as exc:
        return {'skip': f'triton does not import: {exc}'}

    class StandInDriver:
        """Reports one GPU; its device index is the compute capability, so that each GPU gets
        its own entry in Triton's per-device kernel caches."""

        arch = 0

        def get_current_target(self) -> GPUTarget:
            return GPUTarget('cuda', self.arch, 32)

        def get_current_device(self) -> int:
            return self.arch

        def get_current_stream(self, device: int = 0) -> int:
            return 0

    stand_in = StandInDriver()
    driver.set_active(stand_in)
    kernels: Dict[str, dict] = defaultdict(lambda: {'arches': set(), 'dtypes': set(),
                                                    'constexprs': defaultdict(set),
                                                    'fused_multiply_adds': 0})
    launch = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):  # noqa: ANN001, ANN002, ANN003
        compiled = launch(self, *args, grid=grid, warmup=True, **kwargs)
        ptx = compiled.asm['ptx']
        assert f'.target sm_{stand_in.arch}' in ptx and compiled.asm['cubin'], \
            f'{self.fn.__name__}: no sm_{stand_in.arch} binary'
        record = kernels[self.fn.__name__]
        record['arches'].add(stand_in.arch)
        record['fused_multiply_adds'] = max(record['fused_multiply_adds'], ptx.count('fma.'))
        record['dtypes'].add(str(args[0].dtype).replace('torch.', ''))
        for name, value in kwargs.items():
            if name not in OPTIONS:
                record['constexprs'][name].add(value)
        return compiled

    JITFunction.run = compile_only
    cases = runpy.run_path(script)['gpu_compile_cases']
    failures: List[str] = []
    for arch in ARCHES:
        stand_in.arch = arch
        try:
            cases()
        except Exception:  # one GPU's failure is a result; the next GPUs still compile
            failures.append(f'sm_{arch}: {traceback.format_exc(limit=-6)}')
    return {'failures': failures,
            'kernels': {name: {'arches': sorted(r['arches']), 'dtypes': sorted(r['dtypes']),
                               'constexprs': {k: sorted(v) for k, v in r['constexprs'].items()},
                               'fused_multiply_adds': r['fused_multiply_adds']}
                        for name, r in kernels.items()}}


if __name__ == '__main__':
    print(json.dumps(_compile_all(sys.argv[1])))
