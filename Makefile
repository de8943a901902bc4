# The whole set-up on a fresh machine is `make demo` or `make test`: both build .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env demo demo-stock demo-seeds demo-tiles lint test bench dropin clean-env

env:
	@bash tools/make_env.sh

demo: env
	$(PY) -m mmdet_retina_plugin.tools.demo

demo-stock: env
	$(PY) -m mmdet_retina_plugin.tools.demo --compare

# ours, parity and stock over seeds 0..3 (16 to 25 min per seed on 2 cores): mean, spread, difference to stock
demo-seeds: env
	$(PY) -m mmdet_retina_plugin.tools.demo_seeds

# train on 256 px windows of large generated images, evaluate sliced vs whole-image (docs/large_images.md)
demo-tiles: env
	$(PY) -m mmdet_retina_plugin.tools.demo_tiles

# ruff's rules are in ruff.toml; `$(VENV)/bin/ruff check --fix .` sorts imports.
lint: env
	$(VENV)/bin/ruff check .

test: env
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: env
	$(PY) -m bench.run_all

# our modules swapped into every mmdet config that uses FPN/FocalLoss/MaxIoUAssigner/RetinaHead
# (the test suite checks one config of each of 12 families): counts in work_dirs/dropin/report.{md,json}
DROPIN_WORKERS ?= 2
dropin: env
	$(PY) -m mmdet_retina_plugin.tools.zoo_sweep --all --workers $(DROPIN_WORKERS) --out work_dirs/dropin

clean-env:
	rm -rf $(VENV)
