#!/usr/bin/env bash
# `pip install .` into a brand-new virtual environment gives working commands.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check . 2>&1 | grep -v -i "warning" || true
"$venv/bin/edge-agent" --version
"$venv/bin/edge-agent" check -c configs/pi.toml
"$venv/bin/edge-agent" modules --json | "$venv/bin/python" -c "import json,sys; assert any(m['name']=='window' for m in json.load(sys.stdin))"
echo "install check: ok"
