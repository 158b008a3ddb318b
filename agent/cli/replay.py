"""``edge-agent replay``: a config's modules over a recording, one JSON line per emitted record."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.config import load_config
from agent.errors import ConfigError
from agent.runtime.replay import (
    InputError,
    ReplayReport,
    printer,
    read_recording,
    replay,
    sorted_by_time,
    topic_prefix,
)


def _speed(value: str) -> float | None:
    if value == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use a number (2 = twice real time) or max") from None
    if not speed > 0 or speed == float("inf"):
        raise click.BadParameter(f"{value!r}: the speed must be a positive number, or max")
    return speed


@click.command("replay")
@click.option(
    "-c", "--config", "config_path", required=True,
    type=click.Path(dir_okay=False, path_type=Path), help="The agent config (TOML).",
)
@click.option(
    "--input", "input_path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
    help="Recorded readings: .jsonl ({sensor, ts, value} a line), .csv (sensor,ts,value), or -.",
)
@click.option("--speed", default="max", show_default=True,
              help="N plays N times faster than real time; max goes as fast as it can.")
@click.option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv"]), default="auto",
              show_default=True, help="Input format; auto goes by the file extension.")
@click.option("--sort", is_flag=True,
              help="Sort the readings by time first (reads the whole file into memory).")
@click.option("--quiet", "-q", is_flag=True, help="No summary on stderr.")
def replay_command(
    config_path: Path, input_path: str, speed: str, fmt: str, sort: bool, quiet: bool
) -> None:
    """Run the config's modules over recorded readings by their timestamps, with no broker
    and no sync; print every emitted record as a JSON line (stream, ts, data)."""
    pace = _speed(speed)
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        sys.exit(2)
    report = ReplayReport()
    records = read_recording(input_path, topic_prefix(loaded), report, fmt)
    try:
        replay(
            loaded, sorted_by_time(records) if sort else records,
            printer(sys.stdout, report, flush=pace is not None), report, speed=pace,
        )
    except InputError as exc:
        click.echo(f"edge-agent replay: {exc}", err=True)
        sys.exit(1)
    finally:
        sys.stdout.flush()
    if not quiet:
        click.echo(report.summary(), err=True)
    if report.start_failed:
        sys.exit(1)
