#!/usr/bin/env bash
# Installs the system packages the tests and the demo need, if they are missing (Debian/Raspberry Pi OS):
# Mosquitto, NATS and RabbitMQ for the brokers, Debian's Chromium for the console's browser tests
# (Playwright drives it with executable_path; it never downloads a browser).
# `ensure-deps.sh demo` installs only what `make demo` runs (Mosquitto).
set -euo pipefail
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
if [ "${1:-}" != "demo" ]; then
  [ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
  # libfaketime steps the wall clock under a running agent in the clock tests.
  command -v faketime >/dev/null 2>&1 || missing+=(faketime)
  # socat makes the pseudo-terminal pairs of the serial and Modbus RTU source tests.
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  # The scale tests' other brokers: a NATS cluster and RabbitMQ's MQTT plugin, started by fixtures.
  command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
  # The poor-link test and benchmark: network namespaces, a veth pair and tc (iproute2), and
  # iptables' NFQUEUE where the kernel has no sch_netem.
  command -v tc >/dev/null 2>&1 || missing+=(iproute2)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged broker on 1883; the tests and the demo start brokers of their own.
