"""The source plugin API: registry and listing, restarts with backoff while the others carry on,
backpressure (skipped polls, a paused stream), counters and health in status and /metrics."""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.api import Source, SourceConfig
from agent.cli.main import main
from agent.config import load_config
from agent.errors import ConfigError
from agent.health.status import read_status
from agent.outbox import Outbox
from agent.source_harness import run_source, run_source_async
from tests.conftest import AgentProcess, free_port

FLAKY = '''
import asyncio
from agent import Source, SourceConfig


class FlakyConfig(SourceConfig):
    fail_times: int = 2


class Flaky(Source[FlakyConfig]):
    """Fails its first runs (counted in a file beside it), then reads 1, 2, 3 and waits."""

    Config = FlakyConfig
    attempts = 0

    async def run(self):
        Flaky.attempts += 1
        if Flaky.attempts <= self.config.fail_times:
            raise ConnectionError(f"device gone (attempt {Flaky.attempts})")
        self.context.report_ok()
        records = [self.context.reading("flaky", float(v), ts=1_700_000_000.0 + v) for v in (1, 2, 3)]
        await self.context.publish([r for r in records if r is not None])
        await asyncio.Event().wait()
'''


class CountingConfig(SourceConfig):
    interval: float = 0.01


class Counting(Source[CountingConfig]):
    """Publishes one reading a tick."""

    Config = CountingConfig

    async def run(self) -> None:
        n = 0
        async for now in self.context.ticks(self.config.interval):
            n += 1
            record = self.context.reading("n", float(n), ts=now)
            assert record is not None
            self.context.publish_nowait([record])


class Refusing(Source[SourceConfig]):
    """Offers values that are not readings, then one that is."""

    Config = SourceConfig

    async def run(self) -> None:
        context = self.context
        made = [context.reading("s", value) for value in ("x", True, float("nan"), 1.5)]
        made.append(context.reading("s", 2.0, ts=-1))
        await context.publish([record for record in made if record is not None])
        await asyncio.Event().wait()


def test_sources_lists_the_built_ins_with_their_schema() -> None:
    result = CliRunner().invoke(main, ["sources", "--json"])
    assert result.exit_code == 0, result.output
    listing = {item["name"]: item for item in json.loads(result.output)}
    assert {"mqtt", "simulator", "sysfs", "exec", "tail", "modbus", "http", "serial", "opcua"} <= set(listing)
    assert listing["mqtt"]["target"] == "agent.sources.mqtt:MqttSource"
    assert "topics" in listing["mqtt"]["config_schema"]["properties"]
    plain = CliRunner().invoke(main, ["sources"])
    assert plain.exit_code == 0 and "simulator " in plain.output and 'rate (default 1.0)' in plain.output


def test_a_failing_source_is_restarted_as_a_new_instance_with_backoff(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    (tmp_path / "flaky.py").write_text(FLAKY)
    run = run_source("flaky.py:Flaky", {}, base_dir=tmp_path, timeout=5,
                     until=lambda run: len(run.records) == 3)
    assert [record.data for record in run.records] == [
        {"sensor": "flaky", "value": v} for v in (1.0, 2.0, 3.0)
    ]
    assert [record.topic for record in run.records] == ["sensors/flaky"] * 3
    assert run.counters["restarts"] == 2
    assert run.health["connected"] is True and run.health["last_error"] is None


def test_readings_that_are_not_numbers_or_have_a_bad_time_are_counted_by_reason() -> None:
    run = run_source(Refusing, {}, until=lambda run: run.records, timeout=2)
    assert [record.data["value"] for record in run.records] == [1.5]
    assert run.dropped == {"value_not_a_number": 2, "value_not_finite": 1, "bad_ts": 1}
    assert run.counters["received"] == 5 and run.counters["accepted"] == 1
    assert run.counters["dropped.value_not_a_number"] == 2


def test_a_poller_skips_and_counts_polls_while_the_bus_is_full() -> None:
    run = run_source(Counting, {"interval": 0.005}, queue=3, timeout=0.5, consume=False)
    assert [record.data["value"] for record in run.records] == [1.0, 2.0, 3.0]
    assert run.counters["skipped_polls"] > 10


async def test_a_stream_waits_in_publish_while_the_bus_is_full() -> None:
    class Stream(Source[SourceConfig]):
        Config = SourceConfig
        published = 0

        async def run(self) -> None:
            for n in range(100):
                record = self.context.reading("s", float(n))
                assert record is not None
                await self.context.publish([record])
                Stream.published += 1

    run = await run_source_async(Stream, {}, queue=10, timeout=0.3, consume=False)
    assert len(run.records) == 10 and Stream.published == 9  # the 10th filled the queue and waits
    assert run.counters["paused"] == 1


def test_source_entries_are_validated_by_their_own_config(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent("""
        device_id = "gw"
        data_dir = "data"
        [[sources]]
        name = "a"
        type = "flaky.py:Flaky"
        fail_times = "many"
        colour = "red"
        [[sources]]
        name = "b"
        [[sources]]
        name = "c"
        type = "simulator"
        rate = 0
    """))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = {issue.path: issue.reason for issue in caught.value.issues}
    assert set(found) == {"sources[0].fail_times", "sources[0].colour", "sources[1].type", "sources[2].rate"}
    assert found["sources[0].colour"] == "unknown key" and found["sources[1].type"] == "required"


@pytest.mark.integration
def test_a_failing_source_is_named_in_status_and_metrics_while_the_others_carry_on(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        device_id = "gw"
        data_dir = "data"
        [metrics]
        listen = "127.0.0.1:{port}"
        [[sources]]
        name = "broken"
        type = "flaky.py:Flaky"
        fail_times = 1000
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
        stats = ["count"]
    """))
    agent = AgentProcess(config).start()
    try:
        agent.wait_for_log("restarting in", count=2)
        time.sleep(2.5)  # a health report and a closed window
        status = read_status(tmp_path / "data")
        broken, sim = status["sources"]["broken"], status["sources"]["sim"]
        assert broken["connected"] is False and broken["restarts"] >= 2
        assert "ConnectionError: device gone" in broken["last_error"]
        assert sim["connected"] is True and sim["accepted"] > 0 and sim["restarts"] == 0
        assert sim["received"] >= sim["accepted"]  # the simulator's readings are received too
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'edge_agent_source_restarts_total{source="broken"}' in metrics
        assert 'edge_agent_source_connected{source="broken"} 0' in metrics
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0
    finally:
        agent.stop()
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        counted = sum(record.data["count"] for record in box.unsent())
    finally:
        box.close()
    assert counted == read_status(tmp_path / "data")["sources"]["sim"]["accepted"]


def test_the_harness_stops_a_source_that_never_returns() -> None:
    started = time.monotonic()
    asyncio.run(run_source_async(Counting, {}, timeout=0.2))
    assert time.monotonic() - started < 2


async def test_a_source_that_turns_cancellation_into_an_error_still_stops() -> None:
    class Stubborn(Source[SourceConfig]):
        Config = SourceConfig

        async def run(self) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise ConnectionError("request cancelled") from None  # as some libraries do

    started = time.monotonic()
    run = await run_source_async(Stubborn, {}, timeout=0.2)
    assert time.monotonic() - started < 2 and run.counters.get("restarts", 0) == 0
