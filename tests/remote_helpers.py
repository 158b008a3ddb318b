"""Helpers for the remote-config and command tests: the cloud's side of the wire (a paho client
speaking ``cloud_sync.protocol``), agent configs under remote control, a module that can be told
to crash."""

from __future__ import annotations

import itertools
import json
import ssl
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_sync import protocol
from tests.sync_helpers import cloud_section

CRASHY = '''
from agent import Module, ModuleConfig


class Crashy(Module):
    """Passes readings on, or fails when told to (a test's misbehaving module)."""

    class Config(ModuleConfig):
        crash: bool = False
        fail_start: bool = False

    async def start(self):
        if self.config.fail_start:
            raise RuntimeError("crashy cannot start")

    def process(self, record):
        if self.config.crash:
            raise RuntimeError("crashy crashed")
'''


def remote_config(
    tmp_path: Path, cloud_url: str, remote: str = "allow_config = true\ngrace_period = \"1500ms\"",
    modules: str = "", device_id: str = "test-gw", cloud: dict[str, Any] | None = None,
) -> Path:
    """An agent config with a simulator, a window, the crashy module, ``[cloud]`` and ``[remote]``."""
    (tmp_path / "crashy.py").write_text(CRASHY)
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(f"""
        device_id = "{device_id}"
        data_dir = "{tmp_path / 'data'}"
        [supervisor]
        restart_after_errors = 1

        [[sources]]
        name = "sim"
        type = "simulator"
        sensors = 2
        rate = 20

        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "1s"
        stats = ["count", "mean"]

        [[modules]]
        name = "crashy"
        use = "crashy.py:Crashy"
        inputs = ["sensors/#"]
        """) + textwrap.dedent(modules) + cloud_section(cloud_url, **(cloud or {}))
        + f"\n[remote]\n{remote}\n")
    return path


def body(config: Path) -> str:
    """The config file as a remote document carries it: without the operator-only sections."""
    text = config.read_text()
    return text.split("\n[remote]")[0]


def without_files(text: str) -> str:
    """A document without the crashy module (a module file, which the console refuses to pass
    on unsigned: only the device knows which files its operator's file loads)."""
    start = text.index('[[modules]]\nname = "crashy"')
    end = text.index("\n[", start + 1)
    return text[:start] + text[end + 1:]


class CloudClient:
    """The cloud's end: publishes desired configs and commands, collects what devices send."""

    def __init__(self, port: int, protocol_version: int = mqtt.MQTTv5, prefix: str = "edge",
                 tls: dict[str, Any] | None = None, client_id: str = "") -> None:
        self.prefix = prefix
        self.v5 = protocol_version == mqtt.MQTTv5
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol_version)
        if tls:
            self.client.tls_set(ca_certs=tls["ca"], certfile=tls.get("cert"), keyfile=tls.get("key"),
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.messages: list[tuple[str, bytes, Any]] = []
        self.granted: list[Any] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda c, u, mid, codes, props=None: self.granted.extend(codes)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), message.properties))

    def subscribe(self, topic: str) -> None:
        before = len(self.granted)
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: len(self.granted) > before, 5, f"SUBACK for {topic}")

    def topic(self, device: str, rest: str) -> str:
        return f"{self.prefix}/{device}/{rest}"

    def desired(self, device: str, doc: protocol.DesiredConfig | bytes) -> None:
        payload = doc if isinstance(doc, bytes) else doc.encode()
        info = self.client.publish(protocol.config_topic(self.prefix, device, "desired"), payload, 1, True)
        info.wait_for_publish(5)

    def reports(self, device: str) -> list[dict[str, Any]]:
        topic = protocol.config_topic(self.prefix, device, "reported")
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p]

    def wait_report(
        self, device: str, version: int | None, result: str, timeout: float = 15.0, since: int = 0
    ) -> dict[str, Any]:
        """The newest report of ``version`` with ``result``, among those after the ``since``-th."""
        def found() -> dict[str, Any] | None:
            return next((r for r in reversed(self.reports(device)[since:])
                         if r["version"] == version and r["result"] == result), None)
        seen = [(r["version"], r["result"]) for r in self.reports(device)]
        wait_until(lambda: found() is not None, timeout, f"report v{version} {result} (before: {seen})")
        report = found()
        assert report is not None
        return report

    def command(
        self, device: str, name: str, args: dict[str, Any] | None = None, *, command_id: str | None = None,
        expiry: float | None = 30.0, expires_at: float | None = None, retain: bool = False,
        reply_to: str | None = None, raw: bytes | None = None, timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Send a command and wait for its reply (by correlation data on MQTT 5, by id otherwise)."""
        command_id = command_id or f"c{next(self._ids)}-{time.monotonic_ns()}"
        if reply_to is None:
            reply_to = protocol.reply_topic(self.prefix, device, "test-console")
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = reply_to
            properties.CorrelationData = command_id.encode()
            if expiry:
                properties.MessageExpiryInterval = int(expiry)
        elif expiry and expires_at is None:
            expires_at = time.time() + expiry
        payload = raw if raw is not None else protocol.Command(
            name, command_id, args or {}, None if self.v5 else reply_to, expires_at
        ).encode()
        start = len(self.messages)
        info = self.client.publish(protocol.command_topic(self.prefix, device, name), payload, 1, retain,
                                   properties=properties)
        info.wait_for_publish(5)
        return self.wait_reply(command_id, start, timeout)

    def wait_reply(self, command_id: str, start: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            with self._lock:
                for topic, payload, props in self.messages[start:]:
                    if "/reply" not in topic:
                        continue
                    doc = json.loads(payload)
                    correlation = getattr(props, "CorrelationData", None)
                    if doc.get("id") == command_id or correlation == command_id.encode():
                        return {**doc, "_topic": topic, "_correlation": correlation}
            return None
        wait_until(lambda: found() is not None, timeout, f"a reply to {command_id}")
        reply = found()
        assert reply is not None
        return reply

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)
