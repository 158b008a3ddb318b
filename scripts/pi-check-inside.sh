#!/bin/bash
# The half of scripts/pi-check.sh that runs inside the emulated Debian (as root in a chroot, the
# checkout in /src/tidegate):
#   install  scripts/install.sh as a user runs it, pip allowed wheels only; which wheels were
#            installed
#   survey   which extras have wheels for this architecture and which need a compiler (pip's
#            dry runs; read-only, so it runs beside `run`)
#   run      (no network but loopback) Mosquitto with the installed drop-in, `edge-agent check` on
#            the installed Pi config, idle RSS, `run` on the simulator and the MQTT source,
#            status, outbox, SIGTERM and exit status 0
set -euo pipefail

SRC=/src/tidegate
VENV=/opt/edge-agent/venv
AGENT=$VENV/bin/edge-agent
read -r -a EXTRAS <<< "${PI_CHECK_EXTRAS:-zstd signing sparkplug modbus serial http opcua ml cloud nats}"
RUN_SECONDS=${PI_CHECK_RUN_SECONDS:-30}

say() { printf 'pi-check [%s]: %s\n' "$(uname -m)" "$*"; }
die() { say "FAIL: $*"; exit 1; }

phase_install() {
  say "$(. /etc/os-release && echo "$PRETTY_NAME"), $(python3 --version), glibc $(ldd --version | head -n 1 | awk '{print $NF}')"
  local started=$SECONDS
  # No compiler on the board, and none wanted: a package without a wheel fails the install.
  (cd "$SRC" && PIP_ONLY_BINARY=:all: scripts/install.sh) || die "scripts/install.sh failed"
  say "install.sh: $((SECONDS - started)) s (emulated)"
  say "installed distributions (the wheel tag each came as; built here = compiled on the board):"
  "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
built = []
for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
    name = dist.metadata["Name"]
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    local = dist.read_text("direct_url.json") is not None
    platform = {tag.rsplit("-", 1)[-1] for tag in tags}
    # A wheel pip builds from an sdist is tagged linux_<arch>; PyPI's are manylinux/musllinux/any.
    from_source = any(p.startswith("linux_") for p in platform)
    print(f"  {name:<22} {dist.version:<12} {', '.join(sorted(platform)) or '?'}"
          + ("  (this checkout, pure Python)" if local else "") + ("  BUILT HERE" if from_source else ""))
    if from_source:
        built.append(name)
if built:
    raise SystemExit(f"compiled from source on the board: {', '.join(built)}")
EOF
}

# For each extra: the packages it adds, as wheels or sdists (an sdist needs a compiler here).
# pip resolves each extra's own requirements, as the checkout's pyproject.toml declares them,
# rather than the checkout with the extra (that would rebuild the checkout's metadata in an
# emulated setuptools once per extra), in an empty venv with the pip Debian ships: it needs
# nothing installed, so it runs beside the install and the run.
survey_extras() {
  local started=$SECONDS line extra survey=/tmp/survey-venv
  python3 -m venv "$survey"
  local -A wanted=()
  while read -r line; do
    wanted[${line%% *}]=${line#* }
  done < <(python3 - "$SRC/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as file:
    extras = tomllib.load(file)["project"]["optional-dependencies"]
for extra, specs in extras.items():
    print(extra, " ".join(spec.replace(" ", "") for spec in specs))
EOF
  )
  say "extras on $(uname -m) (pip $("$survey/bin/pip" --version | awk '{print $2}') resolving from PyPI, dry run):"
  for extra in "${EXTRAS[@]}"; do
    if [ -z "${wanted[$extra]:-}" ]; then
      say "  $extra: no such extra in pyproject.toml"
      continue
    fi
    local report=/tmp/extra-$extra.json requirements
    read -r -a requirements <<< "${wanted[$extra]}"
    if ! "$survey/bin/pip" install --disable-pip-version-check --dry-run --report "$report" "${requirements[@]}" \
        >/tmp/extra-$extra.log 2>&1; then
      if grep -q 'did not run successfully' /tmp/extra-$extra.log &&
          grep -q -E 'No working compiler|gcc|cc: not found|error: command' /tmp/extra-$extra.log; then
        # an sdist whose build, even of its metadata, needs a compiler (zstandard's needs cffi's)
        local sources
        sources=$(grep -oE '(Downloading|Using cached) [^ ]+\.(tar\.gz|zip)' /tmp/extra-$extra.log |
                  awk '{print $NF}' | sed -E 's#.*/##; s/\.(tar\.gz|zip)$//' | sort -u | paste -sd, - | sed 's/,/, /g') || true
        say "  $extra: NEEDS A COMPILER: no wheel here for ${sources:-a dependency} (source only), and pip cannot build it without one"
      else
        say "  $extra: cannot be installed here: $(grep -m 1 -E 'ERROR|error:' /tmp/extra-$extra.log || tail -n 1 /tmp/extra-$extra.log)"
      fi
      continue
    fi
    python3 - "$extra" "$report" <<'EOF'
import json, sys
extra, path = sys.argv[1], sys.argv[2]
base = {"aiomqtt", "paho-mqtt", "pydantic", "pydantic-core", "sqlite-utils", "click",
        "annotated-types", "typing-extensions", "typing-inspection", "click-default-group",
        "pluggy", "python-dateutil", "six", "sqlite-fts4", "tabulate", "tzdata", "orjson", "pip",
        "setuptools"}
wheels, sdists = [], []
for item in json.load(open(path))["install"]:
    name = item["metadata"]["name"].lower().replace("_", "-")
    if name in base:
        continue
    url = item["download_info"]["url"]
    (wheels if url.endswith(".whl") else sdists).append(f"{name} {item['metadata']['version']}")
verdict = "wheels only" if not sdists else "NEEDS A COMPILER for " + ", ".join(sdists)
print(f"pi-check:   {extra}: {verdict}" + (f" (wheels: {', '.join(wheels)})" if wheels else ""))
EOF
  done
  say "extras survey: $((SECONDS - started)) s (emulated)"
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# The part of a process's RSS that is qemu-user's own, not the emulated program's: qemu's binary,
# its translated code (the one writable and executable mapping) and its own heap.
qemu_kb() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / {own = ($2 ~ /w/ && $2 ~ /x/) || $6 ~ /qemu-/ || $6 == "[heap]"}
       /^Rss:/ && own {kb += $2} END {print kb + 0}' "/proc/$1/smaps"
}

mb() { awk -v kb="$1" 'BEGIN {printf "%.1f MB", kb / 1024}'; }

# What the run started, stopped however it ends (a failed check leaves nothing running).
stop_started() {
  [ -n "${AGENT_PID:-}" ] && kill -KILL "$AGENT_PID" 2>/dev/null
  [ -s /run/mosquitto/mosquitto.pid ] && kill "$(cat /run/mosquitto/mosquitto.pid)" 2>/dev/null
  return 0
}

phase_run() {
  trap stop_started EXIT
  install -d -o mosquitto -g mosquitto /run/mosquitto
  # it names each file it reads on its console, before its own log file takes over
  mosquitto -c /etc/mosquitto/mosquitto.conf -d > /tmp/mosquitto-start.log 2>&1
  for _ in $(seq 300); do grep -q 'running' /var/log/mosquitto/mosquitto.log 2>/dev/null && break; sleep 0.2; done
  grep -q 'Loading config file /etc/mosquitto/conf.d/edge-agent.conf' /tmp/mosquitto-start.log ||
    die "Mosquitto did not read the installed drop-in"
  say "Mosquitto $(mosquitto -h 2>/dev/null | head -n 1 | awk '{print $3}') running with conf.d/edge-agent.conf"

  "$AGENT" check -c /etc/edge-agent/agent.toml || die "check on the installed Pi config"

  install -m 0640 -g edge-agent /dev/stdin /etc/edge-agent/pi-check.toml <<'EOF'
device_id = "pi-check"
data_dir = "/var/lib/edge-agent"

[[sources]]
name = "sim"
type = "simulator"
sensors = 8
rate = 5.0

[[sources]]
name = "local"
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
topics = ["lab/#"]
qos = 1

[[modules]]
name = "climate_10s"
use = "window"
inputs = ["sensors/#", "lab/#"]
sync = true
[modules.with]
every = "10s"
stats = ["count", "mean", "min", "max"]
EOF
  # A bare interpreter under the same emulation: what qemu itself adds to every RSS figure.
  python3 -c 'import time; time.sleep(8)' & local bare=$!
  sleep 6; local bare_rss bare_qemu; bare_rss=$(rss_kb $bare); bare_qemu=$(qemu_kb $bare); wait $bare

  local log=/var/lib/edge-agent/pi-check.log
  setpriv --reuid edge-agent --regid edge-agent --init-groups -- "$AGENT" run -c /etc/edge-agent/pi-check.toml \
    > "$log" 2>&1 &
  local pid=$!
  AGENT_PID=$pid
  for _ in $(seq 600); do grep -q 'ready' "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
  grep -q 'ready' "$log" || { cat "$log"; die "the agent did not become ready"; }
  sleep 2
  local rss qemu; rss=$(rss_kb $pid); qemu=$(qemu_kb $pid)
  say "RSS 2 s after ready: agent $(mb "$rss") ($(mb "$qemu") of it qemu's own, so $(mb $((rss - qemu))) emulated)," \
      "bare python3 $(mb "$bare_rss") ($(mb "$bare_qemu") qemu's, $(mb $((bare_rss - bare_qemu))) emulated)"

  "$VENV/bin/python" - <<'EOF'
import json, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-check-sensor")
client.connect("127.0.0.1", 1883)
client.loop_start()
infos = [client.publish(f"lab/s{i % 4}", json.dumps({"value": i % 50}), qos=1) for i in range(1000)]
for info in infos:
    info.wait_for_publish(60)
client.disconnect()
client.loop_stop()
EOF
  say "published 1000 QoS 1 readings to the local Mosquitto; running ${RUN_SECONDS} s"
  sleep "$RUN_SECONDS"

  "$AGENT" status -c /etc/edge-agent/pi-check.toml
  "$AGENT" status -c /etc/edge-agent/pi-check.toml --json > /tmp/status.json
  "$VENV/bin/python" - <<'EOF' || die "status"
import json
state = json.load(open("/tmp/status.json"))
assert state["daemon"]["running"], "the daemon is not running"
local = state["sources"]["local"]
assert local.get("accepted") == 1000, f"MQTT source accepted {local.get('accepted')} of 1000"
assert state["sources"]["sim"].get("accepted", 0) > 0, "no simulator readings"
assert not state["local_brokers"]["local"]["dropped"], state["local_brokers"]  # or expired: None
EOF
  local rows; rows=$("$AGENT" outbox -c /etc/edge-agent/pi-check.toml | wc -l)
  [ "$rows" -gt 0 ] || die "nothing in the outbox"
  say "outbox: $rows summaries waiting; the first:"
  "$AGENT" outbox -c /etc/edge-agent/pi-check.toml --limit 1

  kill -TERM $pid
  local status=0
  wait $pid || status=$?
  AGENT_PID=
  [ $status -eq 0 ] || { tail -n 20 "$log"; die "exit status $status after SIGTERM"; }
  say "SIGTERM: exit 0"
}

case "${1:-}" in
  install) phase_install ;;
  survey) survey_extras ;;
  run) phase_run ;;
  *) echo "usage: $0 install|survey|run" >&2; exit 2 ;;
esac
