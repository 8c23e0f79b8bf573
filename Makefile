# The two quickstart commands. Each creates .venv (Python >= 3.11) and installs what it needs.
#   make demo   runs the main job on the built-in synthetic demo data
#   make test   checks the import layers (lint-imports) and runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo

.PHONY: demo test clean

$(VENV)/.installed-%: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mrp-jax needs Python >= 3.11 (set PYTHON=python3.11)"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$*]'
	touch $@

demo: $(VENV)/.installed-test
	$(PY) -m mrp_jax.main --config configs/demo.py --workdir $(WORKDIR)

test: $(VENV)/.installed-test
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n auto --dist worksteal -q tests

clean:
	rm -rf $(VENV) runs
