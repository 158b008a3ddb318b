#!/usr/bin/env bash
# Install, upgrade or remove Edge Agent as a systemd service on a Debian-based gateway
# (Raspberry Pi OS bookworm and later). Running it again upgrades in place.
#
#   sudo scripts/install.sh                     # install or upgrade from this checkout
#   sudo scripts/install.sh --source 'dist/tidegate-0.1.0-py3-none-any.whl[fast]'   # ... or a built wheel
#   sudo scripts/install.sh --uninstall         # remove the service and the venv, keep config and data
#   sudo scripts/install.sh --uninstall --purge # ... and the config and data too
#
# EDGE_AGENT_ROOT relocates every path under another root (tests use it); with it set, or
# without a running systemd, the unit is written but systemctl is not called.
set -euo pipefail

ROOT=${EDGE_AGENT_ROOT:-}
PREFIX="$ROOT/opt/edge-agent"
CONF_DIR="$ROOT/etc/edge-agent"
STATE_DIR="$ROOT/var/lib/edge-agent"
UNIT_DIR="$ROOT/etc/systemd/system"
BIN_DIR="$ROOT/usr/local/bin"
SERVICE_USER=edge-agent
HERE=$(cd "$(dirname "$0")/.." && pwd)
SOURCE="$HERE[fast]"
ACTION=install
PURGE=0

while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=$2; shift 2 ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf 'edge-agent install: %s\n' "$*" >&2; }

use_systemd() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

need_root() {
  if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    say "run as root (sudo)"; exit 1
  fi
}

ensure_user() {
  [ -n "$ROOT" ] && return 0  # a relocated install is a test: no system user
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/edge-agent --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
    say "created system user $SERVICE_USER"
  fi
  # Sensors on serial lines, GPIO and I2C need these groups where the board has them.
  for group in dialout gpio i2c spi; do
    if getent group "$group" >/dev/null; then usermod -a -G "$group" "$SERVICE_USER"; fi
  done
}

ensure_python() {
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { say "Python 3.11 or newer is needed"; exit 1; }
}

# The gateway's own Mosquitto, when it is installed: the queue and persistence the agent's
# QoS 1 session needs (configs/mosquitto-local.conf). An existing drop-in is the operator's.
install_broker_settings() {
  local conf_d="$ROOT/etc/mosquitto/conf.d" dropin="$ROOT/etc/mosquitto/conf.d/edge-agent.conf"
  if [ ! -d "$conf_d" ]; then
    say "no local Mosquitto; with one, install configs/mosquitto-local.conf in its conf.d (docs/install.md)"
    return 0
  fi
  if [ -e "$dropin" ]; then
    say "kept $dropin"
    return 0
  fi
  cp "$HERE/configs/mosquitto-local.conf" "$dropin"
  chmod 0644 "$dropin"
  say "wrote $dropin (the local broker's queue and persistence for the agent)"
  grep -qs '^include_dir /etc/mosquitto/conf.d' "$ROOT/etc/mosquitto/mosquitto.conf" ||
    say "warning: $ROOT/etc/mosquitto/mosquitto.conf does not include_dir /etc/mosquitto/conf.d: add it"
  if use_systemd && systemctl is-active --quiet mosquitto.service; then
    systemctl restart mosquitto.service  # persistence keeps sessions and queued readings
  fi
}

install() {
  need_root
  ensure_python
  ensure_user
  mkdir -p "$PREFIX" "$CONF_DIR" "$STATE_DIR" "$UNIT_DIR"
  # Debian's Python is externally managed (PEP 668): the agent lives in a venv of its own.
  [ -x "$PREFIX/venv/bin/python" ] || python3 -m venv "$PREFIX/venv"
  "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
  # Earlier installs named the distribution edge-agent: two copies would register every
  # module twice.
  "$PREFIX/venv/bin/pip" uninstall -q -y edge-agent >/dev/null 2>&1 || true
  "$PREFIX/venv/bin/pip" install -q --disable-pip-version-check --upgrade "$SOURCE"
  rm -rf "$PREFIX/docs" && cp -r "$HERE/docs" "$PREFIX/docs"
  if [ ! -e "$CONF_DIR/agent.toml" ]; then
    sed -e "s#^data_dir = .*#data_dir = \"/var/lib/edge-agent\"#" "$HERE/configs/pi.toml" > "$CONF_DIR/agent.toml"
    say "wrote $CONF_DIR/agent.toml from the template: set device_id, sources and [cloud]"
  else
    say "kept $CONF_DIR/agent.toml"
  fi
  chmod 0750 "$CONF_DIR" "$STATE_DIR"
  chmod 0640 "$CONF_DIR/agent.toml"
  if [ -z "$ROOT" ]; then
    chown -R "root:$SERVICE_USER" "$CONF_DIR"
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
  fi
  cp "$HERE/configs/edge-agent.service" "$UNIT_DIR/edge-agent.service"
  install_broker_settings
  # On PATH for every user (sudo's secure_path has /usr/local/bin too).
  mkdir -p "$BIN_DIR" && ln -sfn "$PREFIX/venv/bin/edge-agent" "$BIN_DIR/edge-agent"
  # The unit runs the same check before every start (ExecStartPre): a config that is invalid, or
  # still the template's placeholders, keeps the service stopped with the reason in the journal.
  ready=1
  "$PREFIX/venv/bin/edge-agent" check --deployable -c "$CONF_DIR/agent.toml" || ready=0
  if use_systemd; then
    systemctl daemon-reload
    systemctl enable edge-agent.service >/dev/null
    if [ "$ready" -eq 1 ]; then
      systemctl restart edge-agent.service || say "the service did not start: journalctl -u edge-agent"
      say "running: systemctl status edge-agent; sudo -u $SERVICE_USER edge-agent status -c $CONF_DIR/agent.toml"
    fi
  else
    say "installed; no running systemd here, so the service was not started"
  fi
  if [ "$ready" -eq 0 ]; then
    say "the service is enabled but NOT started: edit $CONF_DIR/agent.toml (sudoedit) until"
    say "  edge-agent check --deployable -c $CONF_DIR/agent.toml  passes, then: sudo systemctl restart edge-agent"
  fi
  say "version $("$PREFIX/venv/bin/edge-agent" --version)"
}

uninstall() {
  need_root
  if use_systemd && systemctl list-unit-files edge-agent.service >/dev/null 2>&1; then
    systemctl disable --now edge-agent.service >/dev/null 2>&1 || true
  fi
  rm -f "$UNIT_DIR/edge-agent.service"
  use_systemd && systemctl daemon-reload
  rm -rf "$PREFIX"
  # only our own link: an edge-agent that something else put there stays
  if [ "$(readlink "$BIN_DIR/edge-agent" 2>/dev/null)" = "$PREFIX/venv/bin/edge-agent" ]; then
    rm -f "$BIN_DIR/edge-agent"
  fi
  if [ "$PURGE" -eq 1 ]; then
    rm -rf "$CONF_DIR" "$STATE_DIR"
    rm -f "$ROOT/etc/mosquitto/conf.d/edge-agent.conf"
    [ -z "$ROOT" ] && id -u "$SERVICE_USER" >/dev/null 2>&1 && userdel "$SERVICE_USER"
    say "removed the service, the program, the config and the data"
  else
    say "removed the service and the program; kept $CONF_DIR and $STATE_DIR (--purge removes them)"
  fi
}

"$ACTION"
