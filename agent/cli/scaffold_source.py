"""The files of a new source package (``edge-agent modules new NAME --kind source``)."""

from __future__ import annotations

from string import Template

SOURCE = Template('''\
"""$title: a source of readings for Edge Agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent import PositiveDuration, Source, SourceConfig


class ${cls}Config(SourceConfig):
    path: Path
    """A file that holds one number (a sensor's latest value)."""
    sensor: str = "$name"
    interval: PositiveDuration = 10.0
    """Seconds between reads ("500ms", "10s", "1m" work too)."""
    topic_prefix: str = "sensors/"


class $cls(Source[${cls}Config]):
    """Reads the number in ``path`` every ``interval``; a missing file is a fault, counted, and
    the source carries on (raise from ``run`` instead to be restarted with backoff)."""

    Config = ${cls}Config
    description = "Reads a number from a file every interval (edit me)."

    async def run(self) -> None:
        context = self.context
        async for now in context.ticks(self.config.interval):
            try:
                text = await asyncio.to_thread(self.config.path.read_text)
            except OSError as exc:
                context.fault("unreadable", str(exc))
                context.report_error(f"{self.config.path}: {exc.strerror}")
                continue
            context.report_ok()
            try:
                value = float(text.strip())
            except ValueError:
                context.reject("not_a_number", repr(text[:32]))
                continue
            record = context.reading(self.config.sensor, value, ts=now)
            if record is not None:
                await context.publish([record])
''')

TEST = Template('''\
"""Tests through Edge Agent's source harness: the real runner and bus, a real file."""

from agent.source_harness import run_source

from $package import $cls


def test_reads_the_file_and_counts_what_is_not_a_number(tmp_path):
    path = tmp_path / "value"
    path.write_text("21.5\\n")
    run = run_source($cls, {"path": str(path), "interval": 0.01}, until=lambda run: run.records)
    assert run.records[0].topic == "sensors/$name"
    assert run.records[0].data == {"sensor": "$name", "value": 21.5}
    path.write_text("oops")
    run = run_source($cls, {"path": str(path), "interval": 0.01}, until=lambda run: run.dropped)
    assert run.dropped == {"not_a_number": 1}


def test_a_missing_file_is_a_fault_and_the_source_carries_on(tmp_path):
    run = run_source($cls, {"path": str(tmp_path / "nope"), "interval": 0.01}, timeout=0.2)
    assert run.counters["errors.unreadable"] >= 2
    assert run.health["connected"] is False and "nope" in run.health["last_error"]
''')

README = Template('''\
# $dist

$title: a source of readings for Edge Agent, registered as `$name`.

## Develop

```sh
pip install -e ".[test]"     # into the same environment as edge-agent
pytest                        # the tests run the source through edge-agent's source harness
```

## Use

```toml
[[sources]]
name = "${name}_1"
type = "$name"
path = "/run/$name/value"
interval = "10s"
```

`edge-agent sources` lists it once installed; `edge-agent check -c agent.toml` validates the
entry against `${cls}Config`. Readings go on the bus as `sensors/<sensor>`, like the MQTT
source's, so `inputs = ["sensors/#"]` in a module takes them.

## Ship

`pip wheel --no-deps -w dist .` makes a wheel to copy to the gateway and `pip install` there
into the agent's environment; then restart the agent (a new package is found at start-up, not
on SIGHUP).
''')

SOURCE_FILES = {"source": SOURCE, "test": TEST, "readme": README}
