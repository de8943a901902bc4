# The whole set-up on a fresh machine is `make demo` or `make test`: both build .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env demo demo-stock demo-seeds test bench clean-env

env:
	@bash tools/make_env.sh

demo: env
	$(PY) -m mmdet_retina_plugin.tools.demo

demo-stock: env
	$(PY) -m mmdet_retina_plugin.tools.demo --compare

# ours, parity and stock over seeds 0..3 (16 to 25 min per seed on 2 cores): mean, spread, difference to stock
demo-seeds: env
	$(PY) -m mmdet_retina_plugin.tools.demo_seeds

test: env
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: env
	$(PY) -m bench.run_all

clean-env:
	rm -rf $(VENV)
