"""Clustered and other MQTT brokers for the scale tests: a NATS cluster (routes, JetStream and an
MQTT listener on every node) and a RabbitMQ node with its MQTT plugin, each on free loopback
ports with its own data directory, which a test may kill and bring back."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, wait_for_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class NatsNode:
    """One ``nats-server`` of a cluster; ``kill`` is SIGKILL, ``start`` brings it back on its ports
    and data directory."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.name = name
        self.client_port, self.cluster_port, self.mqtt_port = free_port(), free_port(), free_port()
        self.workdir = workdir
        self.config = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The MQTT listener: what devices and ingest workers connect to."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def write_config(self, peers: list[NatsNode], cluster: str) -> None:
        routes = ", ".join(f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers if p is not self)
        self.config.write_text(
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / self.name}", max_memory_store: 64MB, '
            "max_file_store: 2GB }\n"
            + (f"cluster {{ name: {cluster}, listen: 127.0.0.1:{self.cluster_port}, "
               f"routes: [{routes}] }}\n" if len(peers) > 1 else "")
            # Without stream_replicas, NATS 2.9 sizes its MQTT streams (sessions, retained
            # messages, QoS 1 queues) by the nodes it sees at the first connect: R2 there loses
            # its quorum with one node down, and every MQTT connect then times out.
            + f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}"
            + (f", stream_replicas: {min(3, len(peers))}" if len(peers) > 1 else "") + " }\n"
        )

    def start(self) -> NatsNode:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([NATS_SERVER, "-c", str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_for_port(self.mqtt_port, 20)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(15)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class NatsCluster:
    """``size`` NATS servers routed to each other, each with JetStream and an MQTT listener."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [NatsNode(workdir, f"n{i}") for i in range(size)]
        for node in self.nodes:
            node.write_config(self.nodes, "edge-test")

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until an MQTT client can connect and subscribe: the MQTT streams need a JetStream
        meta leader, which a fresh cluster elects after its routes are up."""
        import paho.mqtt.client as mqtt

        deadline = time.monotonic() + timeout
        while True:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ready-{time.monotonic_ns()}")
            try:
                client.connect("127.0.0.1", self.nodes[0].mqtt_port)
                client.loop_start()
                info = client.subscribe("ready/probe", 1)
                until = time.monotonic() + 3
                while time.monotonic() < until and not client.is_connected():
                    time.sleep(0.05)
                if client.is_connected() and info[0] == 0:
                    time.sleep(0.5)
                    if client.is_connected():
                        return
            except OSError:
                pass
            finally:
                client.loop_stop()
                client.disconnect()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the NATS cluster took no MQTT client within {timeout} s")
            time.sleep(0.5)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def nats_urls(self) -> str:
        return ",".join(node.nats_url for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RabbitNode:
    """A RabbitMQ node with the MQTT plugin, on its own node name, ports and data directory (never
    the system's node on 5672). It starts in 10 to 20 s."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.amqp_port, self.dist_port, self.mqtt_port = free_port(), free_port(), free_port()
        self.nodename = f"edge-test-{self.mqtt_port}@localhost"
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.log = workdir / "rabbitmq.out"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def _env(self) -> dict[str, str]:
        d = self.workdir
        return {
            **os.environ,
            "HOME": str(d),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
        }

    def start(self, timeout: float = 60.0) -> RabbitNode:
        with self.log.open("ab") as log:
            # Its own process group: the script starts beam.smp as a child, and a kill must reach it.
            self.process = subprocess.Popen([RABBITMQ_SERVER], stdout=log, stderr=subprocess.STDOUT,
                                            env=self._env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while "completed with" not in self.log.read_text(errors="replace").split("Starting broker")[-1]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"RabbitMQ did not start:\n{tail}")
            time.sleep(0.2)
        wait_for_port(self.mqtt_port, 10)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
