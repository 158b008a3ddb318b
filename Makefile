# One command for each habit; each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test check bench demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the distribution was called edge-agent before it became tidegate: two copies would register
	# every module twice
	$(PY) -m pip uninstall -q -y edge-agent 2>/dev/null || true
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	scripts/ensure-deps.sh
	$(PY) -m pytest

check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	scripts/ensure-deps.sh
	$(PY) -m bench $(BENCH_ARGS)

demo: $(VENV)/.installed
	scripts/ensure-deps.sh
	$(VENV)/bin/edge-sim demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .demo build *.egg-info
