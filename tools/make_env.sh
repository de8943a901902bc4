#!/usr/bin/env bash
# Creates or reuses .venv with the pinned stack. Idempotent: every step first checks whether its
# result is already there, so a second `make env` takes seconds and never rebuilds mmcv.
set -uo pipefail

VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VPY="$VENV/bin/python"
PIP="$VPY -m pip --disable-pip-version-check"
LOG_DIR="$VENV/logs"

say() { printf '\033[1m[make env] %s\033[0m\n' "$*"; }
fail() {
  printf '\033[31m[make env] FAILED at step: %s\033[0m\n' "$1" >&2
  printf '[make env] what to do: %s\n' "$2" >&2
  exit 1
}
has() { "$VPY" - <<PYEOF >/dev/null 2>&1
$1
PYEOF
}

say "1/6 virtual environment in $VENV"
if [ ! -x "$VPY" ]; then
  "$PY" -m venv "$VENV" || fail "create venv" "install python3.11 and its venv module (apt-get install python3.11-venv), or set PYTHON=/path/to/python3.11"
fi
mkdir -p "$LOG_DIR"

say "2/6 build tools (setuptools>=77,<81 keeps pkg_resources, which mmcv's setup.py imports)"
if ! has "import pkg_resources, wheel"; then
  $PIP install -q "pip>=23" "setuptools>=77,<81" wheel || fail "build tools" "check network access to PyPI"
fi

say "3/6 PyTorch (an existing torch>=2.0 is kept)"
if has "import torch; assert tuple(int(x) for x in torch.__version__.split('.')[:2]) >= (2, 0)"; then
  say "    torch $("$VPY" -c 'import torch; print(torch.__version__)') already installed"
else
  $PIP install "$TORCH_SPEC" || fail "torch" "install torch yourself into $VENV (see pytorch.org), then rerun make env"
fi

say "4/6 mmengine and pure-Python dependencies"
if ! has "import mmengine, pycocotools, matplotlib, pytest; assert mmengine.__version__ == '0.10.7'"; then
  $PIP install -q "mmengine==0.10.7" pycocotools matplotlib "numpy" pytest "pytest-timeout" || fail "mmengine" "check network access to PyPI; log above"
fi

say "4b/6 test, lint and deploy tools (hypothesis, ruff, triton's CPU interpreter, onnx + onnxruntime)"
# triton only when missing: a CUDA build of torch brings the triton it was built against.
if ! has "import triton"; then
  $PIP install -q triton || fail "triton" "check network access to PyPI; log above"
fi
if ! has "import hypothesis, ruff, onnx, onnxruntime, onnxscript"; then
  $PIP install -q hypothesis ruff onnx onnxruntime onnxscript || fail "test/deploy tools" "check network access to PyPI; log above"
fi

say "5/6 mmcv 2.1.0 with compiled ops"
if has "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'"; then
  say "    mmcv 2.1.0 with ops already installed: not rebuilding"
else
  # mmcv's setup.py needs torch in the build env and pkg_resources: no build isolation, pinned setuptools.
  $PIP install -q "setuptools>=77,<81" wheel || fail "mmcv build tools" "check network access to PyPI"
  blog="$LOG_DIR/mmcv-build.log"
  say "    building mmcv from source: ~17 min on 2 cores (no binary wheel on PyPI). Log: $blog"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP install --no-build-isolation "mmcv==2.1.0" >"$blog" 2>&1 &
  pid=$!
  start=$(date +%s)
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null || break
    el=$(( $(date +%s) - start ))
    printf '[make env]     mmcv build running: %dm%02ds elapsed, last log line: %s\n' $((el/60)) $((el%60)) \
      "$(tail -c 300 "$blog" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 1 | cut -c1-100)"
  done
  wait "$pid" || { tail -n 30 "$blog" >&2; fail "mmcv build" "read $blog; the build needs gcc, the Python headers (python3.11-dev) and torch; GPU users can instead run: mim install mmcv==2.1.0 (prebuilt CUDA wheels)"; }
  has "import mmcv, mmcv.ops" || fail "mmcv import" "mmcv installed but its ops do not import; remove it (pip uninstall mmcv) and rerun make env"
fi

say "6/6 mmdet 3.3.0, openmim 0.3.9 and this plugin"
if ! has "import mmdet, mim; assert mmdet.__version__ == '3.3.0'"; then
  # openmim pulls openxlab, which pins setuptools 60.2: installed after mmcv so the build above is unaffected.
  $PIP install -q "mmdet==3.3.0" "openmim==0.3.9" || fail "mmdet/openmim" "check network access to PyPI; log above"
fi
# Reinstalled when setup.py changes (entry points, metadata); --no-deps: the stack above is pinned.
stamp="$VENV/.plugin-setup.sha256"
if [ "$(sha256sum setup.py | cut -d' ' -f1)" != "$(cat "$stamp" 2>/dev/null)" ]; then
  $PIP install -q --no-deps -e . || fail "plugin install" "run: $PIP install -e . and read its error"
  sha256sum setup.py | cut -d' ' -f1 >"$stamp"
fi
has "import torch, mmcv.ops, mmengine, mmdet, mim, pycocotools, mmdet_retina_plugin" \
  || fail "final import check" "run: $VPY -c 'import mmcv.ops, mmdet, mim, mmdet_retina_plugin' to see which import fails"
say "environment ready: $("$VPY" -c 'import torch, mmcv, mmdet, mmengine; print(f"torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}")')"
