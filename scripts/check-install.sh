#!/usr/bin/env bash
# The distribution `tidegate`, built as a wheel and installed into a brand-new virtual
# environment, gives working commands (edge-agent, edge-cloud, edge-sim) under its own name.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/dist" . 2>&1 \
  | grep -v -i "warning" || true
wheel=$(ls "$work"/dist/tidegate-*-py3-none-any.whl)
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$wheel" 2>&1 | grep -v -i "warning" || true
"$work/venv/bin/python" -c "import importlib.metadata as m; assert m.version('tidegate')"
"$work/venv/bin/edge-agent" --version
"$work/venv/bin/edge-agent" check -c configs/simulated.toml
"$work/venv/bin/edge-agent" modules --json | "$work/venv/bin/python" -c "import json,sys; assert any(m['name']=='window' for m in json.load(sys.stdin))"
"$work/venv/bin/edge-cloud" --help >/dev/null
"$work/venv/bin/edge-sim" --help >/dev/null
echo "install check: $(basename "$wheel") installs and runs"
