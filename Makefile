# Developer entry points. Everything runs inside a local virtual environment in .venv,
# created and kept in sync with pyproject.toml by the stamp target below.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean distclean

install: $(STAMP)

# --no-cache-dir: torch and its CUDA libraries take several GB; a cached second copy of the wheels can fill a disk.
$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip
	$(VPY) -m pip install --no-cache-dir -e '.[dev]'
	touch $(STAMP)

# Blend the built-in sample photographs (datasets/samples) and print where the result went.
demo: $(STAMP)
	$(VPY) infer.py $(ARGS)

test: $(STAMP)
	$(VPY) -m pytest -q

lint: $(STAMP)
	$(VPY) -m ruff check .

# One script per method; helper modules (common.py, _*.py) are imported by the scripts, not run.
bench: $(STAMP)
	@set -e; for script in benchmarks/*.py; do \
		case "$$(basename "$$script")" in common.py|_*) continue ;; esac; \
		[ -e "$$script" ] || continue; \
		echo "== $$script"; \
		$(VPY) "$$script"; \
	done

clean:
	rm -rf outputs multirun lightning_logs wandb .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
