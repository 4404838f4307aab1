# Developer entry points. Everything runs inside a local virtual environment in .venv,
# created and kept in sync with pyproject.toml by the stamp target below.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench gpu-check clean distclean

install: $(STAMP)

# --no-cache-dir: torch and its CUDA libraries take several GB; a cached second copy of the wheels can fill a disk.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install --no-cache-dir -e '.[dev,sweep]'
	touch $(STAMP)

# Blend the built-in sample photographs (datasets/samples) and print where the result went.
demo: $(STAMP)
	$(VPY) infer.py $(ARGS)

test: $(STAMP)
	$(VPY) -m pytest -q

lint: $(STAMP)
	$(VPY) -m ruff check .

# One script per method; helper modules (common.py, _*.py) are imported by the scripts, not run, and the GPU
# check (below) has its own target.
bench: $(STAMP)
	@set -e; for script in benchmarks/*.py; do \
		case "$$(basename "$$script")" in common.py|gpu_check.py|_*) continue ;; esac; \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(VPY) "$$script"; \
	done

# The whole GPU verification in one command, under 8 minutes: the gpu-marked tests, then every benchmark's CUDA
# row, each under its own time budget; one table in outputs/gpu_check/ (gpu_check.md and .json). Without CUDA it
# rehearses the same rows at tiny sizes on the CPU. ARGS passes options (e.g. ARGS="--only osmosis ot");
# GPU_CHECK_PYTHON=python3 runs it with an interpreter that already has the dependencies, without the venv.
GPU_CHECK_PYTHON ?= $(VPY)
gpu-check: $(if $(filter $(VPY),$(GPU_CHECK_PYTHON)),$(STAMP))
	$(GPU_CHECK_PYTHON) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf outputs multirun lightning_logs wandb .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
