"""The opcua source against an asyncua server in the test: values by subscription with the
server's timestamps, a value that changes, a node that does not exist, a server that goes away."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.source_harness import SourceRun, run_source
from tests.conftest import free_port, wait_for_port
from tests.source_helpers import run_agent, wait_for_sources

logging.getLogger("asyncua").setLevel(logging.ERROR)


class OpcServer:
    """An asyncua server with a Plant object holding temp (21.5), running (True) and mode
    ("auto", not a number)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.nodes: dict[str, Any] = {}
        for attempt in range(5):  # a free port can be taken by another program before we bind it
            self.port = free_port()
            try:
                self._call(self._start())
                break
            except OSError:
                if attempt == 4:
                    raise
        wait_for_port(self.port)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> None:
        from asyncua import Server

        self.server = Server()
        await self.server.init()
        self.server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/")
        idx = await self.server.register_namespace("urn:edge-agent:test")
        plant = await self.server.nodes.objects.add_object(idx, "Plant")
        self.nodes["temp"] = await plant.add_variable(f"ns={idx};s=Plant.Temp", "Temp", 21.5)
        self.nodes["running"] = await plant.add_variable(f"ns={idx};s=Plant.Running", "Running", True)
        self.nodes["mode"] = await plant.add_variable(f"ns={idx};s=Plant.Mode", "Mode", "auto")
        self.ns = idx
        await self.server.start()

    def write(self, name: str, value: Any) -> None:
        self._call(self.nodes[name].write_value(value))

    def stop(self) -> None:
        if not self.thread.is_alive():
            return  # stopped already
        self._call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def config(server: OpcServer, **more: Any) -> dict[str, Any]:
    return {"url": f"opc.tcp://127.0.0.1:{server.port}/", "sampling_interval": 0.1,
            "publishing_interval": 0.1, "nodes": [
                {"node_id": f"ns={server.ns};s=Plant.Temp", "name": "plant/temp", "unit": "C"},
                {"node_id": f"ns={server.ns};s=Plant.Running", "name": "plant/running"}], **more}


def test_values_arrive_by_subscription_with_the_servers_timestamps(monkeypatch) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    server = OpcServer()
    wrote: list[float] = []

    def step(run: SourceRun) -> bool:
        temps = [r for r in run.records if r.data["sensor"] == "plant/temp"]
        if temps and not wrote:
            wrote.append(time.time())
            server.write("temp", 23.25)
        return len(temps) >= 2

    try:
        run = run_source("opcua", config(server), until=step, timeout=20)
    finally:
        server.stop()
    temps = [r for r in run.records if r.data["sensor"] == "plant/temp"]
    assert [r.data["value"] for r in temps[:2]] == [21.5, 23.25]
    assert temps[0].data["unit"] == "C" and temps[0].topic == "sensors/plant/temp"
    assert abs(temps[1].ts - wrote[0]) < 2.0  # the server's time of the change
    assert [r.data["value"] for r in run.records if r.data["sensor"] == "plant/running"][:1] == [1.0]


def test_a_server_that_goes_away_is_reconnected_with_a_new_client(monkeypatch) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    server = OpcServer()
    stopped: list[bool] = []

    def step(run: SourceRun) -> bool:
        if run.records and not stopped:
            server.stop()
            stopped.append(True)
        return bool(stopped) and run.counters.get("restarts", 0) >= 1

    run = run_source("opcua", config(server, keepalive=0.3, timeout=0.5), until=step, timeout=20)
    assert run.counters["restarts"] >= 1 and run.health["connected"] is False
    assert str(server.port) in run.health["last_error"]


@pytest.mark.integration
def test_opcua_readings_reach_window_summaries_while_another_server_goes_away(tmp_path: Path) -> None:
    server, other = OpcServer(), OpcServer()
    sources = f"""
    [[sources]]
    name = "plc"
    type = "opcua"
    url = "opc.tcp://127.0.0.1:{server.port}/"
    sampling_interval = "100ms"
    publishing_interval = "100ms"
    nodes = [ {{ node_id = "ns={server.ns};s=Plant.Temp", name = "plant/temp", unit = "C" }} ]

    [[sources]]
    name = "line2"
    type = "opcua"
    url = "opc.tcp://127.0.0.1:{other.port}/"
    sampling_interval = "100ms"
    publishing_interval = "100ms"
    keepalive = "300ms"
    timeout = "1s"
    nodes = [ {{ node_id = "ns={other.ns};s=Plant.Temp", name = "line2/temp" }},
              {{ node_id = "ns={other.ns};s=Plant.Mode", name = "line2/mode" }} ]
    """
    data = tmp_path / "data"

    def during(agent) -> None:
        # line2's first values: its temperature, and a mode that is text (dropped, by reason)
        wait_for_sources(data, lambda s: s["line2"].get("accepted") == 1
                         and s["line2"].get("dropped") == {"value_not_a_number": 1}
                         and s["plc"].get("accepted") == 1, "both servers' first values")
        other.stop()  # line2's server goes away: a new client is tried again and again
        wait_for_sources(data, lambda s: s["line2"].get("restarts", 0) >= 1
                         and s["line2"].get("connected") is False
                         and str(other.port) in (s["line2"].get("last_error") or ""), "line2 named")
        for n, value in enumerate((22.0, 22.5, 23.0), start=2):  # the other server carries on
            server.write("temp", value)
            wait_for_sources(data, lambda s, n=n: s["plc"].get("accepted") == n, f"plc's value {n}")

    try:
        windows, status = run_agent(tmp_path, sources, during)
    finally:
        server.stop()
        other.stop()
    assert windows["plant/temp"]["count"] == 4 and windows["plant/temp"]["sum"] == 21.5 + 22.0 + 22.5 + 23.0
    assert windows["line2/temp"]["count"] == 1 and windows["line2/temp"]["sum"] == 21.5
    assert status["sources"]["plc"]["dropped"] == {} and "restarts" not in status["sources"]["plc"]
    assert status["sources"]["line2"]["restarts"] >= 1
