# Entry points (see README): `make demo`, `make test` and `make lint`. Each sets up .venv first.
VENV       ?= .venv
PYTHON     ?= python3
# The CPU wheel keeps CI and laptops light; override e.g. TORCH_SPEC='torch==2.11.*' on a GPU box.
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

# The native CPU scan is compiled by the install: rebuild it when its sources change.
$(VENV)/.installed: pyproject.toml setup.py plugins/cpu/bi_selective_scan_cpu.cpp plugins/cpu/compile_flags.txt $(wildcard plugins/include/vimdeploy/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check '$(TORCH_SPEC)'
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'tensorrt-stubs==10.13.0.35.1'
	touch $@

demo: setup
	$(VENV)/bin/vimdeploy demo

test: setup
	$(PY) -m pytest -ra

# ruff's rules are in pyproject.toml ([tool.ruff]).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) vimdeploy-demo .pytest_cache
