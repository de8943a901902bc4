#!/usr/bin/env bash
# Stock mmdet vs ours on a bare GPU machine, in one command: bench/gpu/run.sh OUT_DIR [options]
#
# The machine needs Python 3 with a CUDA build of torch, Triton, pytest and numpy; mmcv (built
# with its CUDA ops), mmengine, mmdet and their small dependencies come as prebuilt wheels in a
# folder of this checkout (no network needed): $GPU_WHEELS, default .gpu-wheels, filled from the
# wheels beside the checkout. They are installed into $GPU_SITE (default /tmp/site) unless mmdet
# already imports. Then, from the repository root:
#   1. host syncs of loss_by_feat / predict_by_feat under CUDA's sync debug mode
#                                                                      -> OUT_DIR/host_syncs.log
#   2. every row of the side-by-side table (options after OUT_DIR go to it, e.g. --repeats 5),
#      then each target judged from it: met, not met or not measured
#                                  -> OUT_DIR/gpu_side_by_side.json, OUT_DIR/side_by_side.log
#   3. launches, syncs and top kernels of each hot path (RUN_PROFILE=0 skips it)
#                                                                  -> OUT_DIR/kernel_profile.txt
#   4. the tests with CUDA-only cases (RUN_TESTS=0 skips them, TEST_TIMEOUT=seconds bounds them,
#      TESTS="paths" picks others)
#                                                                  -> OUT_DIR/tests.log
# The exit status is non-zero if any step failed; later steps run regardless.
set -uo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi
out=$(realpath -m "$1")
shift
cd "$(dirname "$0")/../.." || exit 2
mkdir -p "$out"
py=${PYTHON:-python3}

if ! $py -c 'import mmdet, mmcv, mmengine' 2>/dev/null; then
    wheels=${GPU_WHEELS:-.gpu-wheels}
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "no mmdet/mmcv/mmengine here and no wheels in $wheels (set GPU_WHEELS)" >&2
        exit 2
    fi
    site=${GPU_SITE:-/tmp/site}
    $py -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl || exit 2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $py -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo 'torch sees no CUDA device' >&2
    exit 2
fi

# the test files with CUDA-only cases or CUDA paths, the shortest first (TESTS=... runs others);
# the Triton-interpreter sweep runs on the CPU, as in CI: not here, where it can outlast the time
CUDA_TESTS="tests/models/layers tests/models/dense_heads/test_gt_reporter.py
    tests/models/dense_heads/test_retina_level_packing.py::test_auto_packs_a_cuda_batch_of_one
    tests/models/dense_heads/test_retina_candidates_triton.py
    tests/models/data_preprocessors tests/configs/test_gpu_configs.py
    tests/reliability/test_bad_data_and_amp.py
    tests/models/dense_heads/test_retina_head_compile.py::test_on_a_gpu_cuda_graphs_replay_the_compiled_head
    tests/models/losses tests/bench/test_gpu_bench.py
    --deselect tests/models/losses/test_triton_interpreter.py"
status=0
$py -m bench.gpu.host_syncs 2>&1 | tee "$out/host_syncs.log" || status=1
$py -m bench.gpu.side_by_side "$out" "$@" 2>&1 | tee "$out/side_by_side.log" || status=1
if [[ ${RUN_PROFILE:-1} == 1 ]]; then
    $py -m bench.gpu.kernel_profile "$out" >"$out/kernel_profile.log" 2>&1 || status=1
fi
if [[ ${RUN_TESTS:-1} == 1 ]]; then
    # shellcheck disable=SC2086  # TESTS is a list of paths
    timeout "${TEST_TIMEOUT:-900}" $py -m pytest -v -p no:cacheprovider ${TESTS:-$CUDA_TESTS} \
        >"$out/tests.log" 2>&1 || status=1
    tail -n 5 "$out/tests.log"
fi
exit $status
