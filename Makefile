# One command for each habit; each creates the virtual environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test check bench demo screenshots clean pi-check

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

# The demo needs the cloud side (console) and nothing of the test tools: .venv/.demo installs
# only that, and only Mosquitto from Debian.
$(VENV)/.demo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip uninstall -q -y edge-agent 2>/dev/null || true
	$(PY) -m pip install -q -e ".[cloud,fast]"
	touch $@

demo: $(VENV)/.demo
	scripts/ensure-deps.sh demo
	$(VENV)/bin/edge-sim demo $(DEMO_ARGS)

# The README's screenshots, taken from the demo itself (during the link cut and after it).
screenshots: $(VENV)/.installed
	scripts/ensure-deps.sh
	EDGE_SCREENSHOTS=docs/screenshots $(PY) -m pytest tests/test_console_outage.py -q

# The Raspberry Pi install under emulation (arm64 and armhf; root; see docs/install.md). The
# output is kept in docs/pi-check.txt.
pi-check:
	bash -o pipefail -c 'scripts/pi-check.sh $(PI_ARCHES) 2>&1 | tee docs/pi-check.txt'

clean:
	rm -rf $(VENV) .demo build *.egg-info
