"""``edge-agent``: run the daemon, check a config, and inspect a device's state."""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from agent import __version__, codec
from agent.cli.daemon import load_or_exit, run_daemon
from agent.errors import ModuleLoadError, OutboxError
from agent.health.status import SOURCE_NOISE, read_status
from agent.outbox import Outbox
from agent.registry import available_modules, available_sources, resolve_module, resolve_source

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The agent config (TOML).",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class LazyGroup(click.Group):
    """A group whose commands in other files are imported only when one of them runs, so that
    ``edge-agent run`` does not carry the imports of every other command in the daemon's memory."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attribute = self.lazy[name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, name)


@click.group(
    cls=LazyGroup,
    lazy={
        "sync": "agent.cli.sync:sync", "replay": "agent.cli.replay:replay_command",
        "backup": "agent.cli.backup:backup", "restore": "agent.cli.backup:restore",
    },
)
@click.version_option(__version__, prog_name="edge-agent")
def main() -> None:
    """Edge Agent: processing modules on local sensor streams, a durable outbox, cloud sync."""


@main.command()
@CONFIG_OPTION
def run(config_path: Path) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the config."""
    sys.exit(run_daemon(config_path))


@main.command()
@CONFIG_OPTION
@click.option(
    "--deployable", is_flag=True,
    help="Also refuse what a template leaves in place (an example.com broker): the service runs this "
    "before it starts.",
)
def check(config_path: Path, deployable: bool) -> None:
    """Validate a config; exit 2 naming every problem as FILE: key.path: reason."""
    loaded = load_or_exit(config_path)
    from agent.cli.deployable import placeholders
    from agent.secret_files import check_secret_files

    if deployable and (found := placeholders(str(config_path), loaded.agent)):
        for issue in found:
            click.echo(str(issue), err=True)
        click.echo(f"{config_path}: still the template: set these, then start the service", err=True)
        sys.exit(2)
    for warning in check_secret_files(loaded.agent):
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"{config_path}: ok ({len(loaded.agent.sources)} sources, {len(loaded.modules)} modules)"
    )


@main.command()
@CONFIG_OPTION
@JSON_OPTION
def status(config_path: Path, as_json: bool) -> None:
    """Backlog, last sync, drops, quarantine and module health, from the data directory."""
    loaded = load_or_exit(config_path)
    try:
        state = read_status(loaded.agent.data_dir)
    except OutboxError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    from agent.health.broker import broker_report  # paho, only for this command

    state["local_brokers"], dropped = broker_report(loaded.agent.sources)
    state["warnings"] = [*(state.get("warnings") or []), *dropped]
    if as_json:
        click.echo(json.dumps(state, indent=2))
    else:
        cloud, max_bytes = loaded.agent.cloud is not None, loaded.agent.buffer.max_bytes
        state = {**state, "data_dir": str(loaded.agent.data_dir.absolute())}
        click.echo(_format_status(state, cloud=cloud, max_bytes=max_bytes))


@main.command()
@CONFIG_OPTION
@JSON_OPTION
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many records.")
def outbox(config_path: Path, as_json: bool, limit: int | None) -> None:
    """Unsent records, oldest first, one JSON object a line."""
    loaded = load_or_exit(config_path)
    try:
        box = Outbox.open_readonly(loaded.agent.data_dir)
    except OutboxError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    try:
        for record in box.unsent(limit):
            # ts stays Unix seconds (the contract); `time` is the same instant for people, UTC
            line = record.as_dict()
            line["time"] = _iso(record.ts)
            click.echo(codec.dumps(line))
    finally:
        box.close()


@main.group(cls=LazyGroup, lazy={"new": "agent.cli.scaffold:new_command"}, invoke_without_command=True)
@JSON_OPTION
@click.pass_context
def modules(ctx: click.Context, as_json: bool) -> None:
    """The modules available to ``use``, each with its config schema; ``modules new NAME``
    writes a new one."""
    if ctx.invoked_subcommand is None:
        _list_modules(as_json)


@main.command()
@JSON_OPTION
def sources(as_json: bool) -> None:
    """The source types available to ``type``, each with its config schema; ``modules new NAME
    --kind source`` writes a new one."""
    _list_plugins(available_sources(), resolve_source, as_json)


def _list_modules(as_json: bool) -> None:
    _list_plugins(available_modules(), resolve_module, as_json)


def _list_plugins(registered: dict[str, str], resolve: Callable[[str], Any], as_json: bool) -> None:
    listing: list[dict[str, Any]] = []
    for name, target in sorted(registered.items()):
        try:
            cls = resolve(name)
        except ModuleLoadError as exc:
            listing.append({"name": name, "target": target, "error": exc.reason})
            continue
        listing.append({
            "name": name,
            "target": target,
            "description": cls.description or (cls.__doc__ or "").strip().splitlines()[0],
            "config_schema": cls.Config.model_json_schema(),
        })
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for item in listing:
        if "error" in item:
            click.echo(f"{item['name']:<16} BROKEN: {item['error']}")
            continue
        click.echo(f"{item['name']:<16} {item['description']}")
        for key, prop in item["config_schema"].get("properties", {}).items():
            default = f" (default {json.dumps(prop['default'])})" if "default" in prop else ""
            click.echo(f"{'':<18}{key}{default}")
            if prop.get("description"):
                click.echo(f"{'':<20}{_first_sentence(prop['description'])}")


def _first_sentence(text: str) -> str:
    line = " ".join(text.split())
    end = line.find(". ")
    return line if end < 0 else line[: end + 1]


def _format_status(state: dict[str, Any], cloud: bool = True, max_bytes: int | None = None) -> str:
    daemon = state["daemon"]
    backlog = state["backlog"]
    age = backlog["oldest_unsent_age_s"]
    sync = state["last_sync"]
    last_ran = daemon.get("last_report_at")
    if daemon["running"]:
        running = f"running, pid {daemon['pid']}"
    else:
        running = "not running" + (f" (last report {_when(last_ran)})" if last_ran else "")
    if not cloud:
        last_sync = "no [cloud] configured: records stay in the outbox" + (
            f", which may grow to {_size(max_bytes)} (buffer.max_bytes; then the oldest are dropped)"
            if max_bytes else "")
    elif sync is None:
        last_sync = "none yet"
    else:
        last_sync = f"{_ago(sync['at'])} ({_when(sync['at'])}), up to seq {sync['acked_seq']}"
    lines = [
        f"device      {state['device_id'] or '?'}",
        f"daemon      {running}",
        f"data        {state.get('data_dir') or ''}".rstrip(),
        f"backlog     {backlog['rows']} records, {backlog['bytes']} bytes"
        + (f", oldest {age:.0f} s old" if age is not None else ""),
        f"last sync   {last_sync}",
        *_sync_lines(state.get("sync")),
        *_remote_lines(state.get("remote")),
        *_clock_lines(state.get("clock")),
        *_outbox_lines(state.get("outbox")),
        f"quarantined {state['quarantined']}",
        "dropped     " + (", ".join(f"{k} {v}" for k, v in sorted(state["dropped"].items())) or "none"),
    ]
    for name, source in state["sources"].items():
        noise = ", ".join(f"{key} {source[key]}" for key in SOURCE_NOISE if source.get(key))
        lines.append(
            f"source      {name}: accepted {source.get('accepted', 0)} of {source.get('received', 0)}"
            + (", dropped " + ", ".join(f"{k} {v}" for k, v in sorted(source["dropped"].items()))
               if source.get("dropped") else "")
            + (f"; not readings: {noise}" if noise else "")
            + (f", last error: {source['last_error']}" if source.get("last_error") else "")
        )
    lines += [f"warning     {warning}" for warning in state.get("warnings") or []]
    # a module's status is what the daemon last reported: without a daemon it is history
    when = "" if daemon["running"] else " when the daemon last ran"
    for name, module in state["modules"].items():
        lines.append(
            f"module      {name} [{module['status']}{when}]: processed {module['processed']}, "
            f"emitted {module['emitted']}, errors {module['errors']}, quarantined {module['quarantined']}"
            + "".join(f", {key} {value}" for key, value in _module_extras(module))
            + (f", last error: {module['last_error']}" if module.get("last_error") else "")
        )
    return "\n".join(lines)


def _module_extras(module: dict[str, Any]) -> list[tuple[str, Any]]:
    """A module's figures beyond the four every module has: in flight, hangs, restarts and the
    module's own counters, in name order."""
    shown = {"processed", "emitted", "errors", "quarantined"}
    extras = [("in flight", module["in_flight"])] if module.get("in_flight") else []
    counters = module.get("counters") or {}
    return extras + [(key, counters[key]) for key in sorted(counters)
                     if key not in shown and counters[key]]


def _sync_lines(sync: dict[str, Any] | None) -> list[str]:
    if sync is None:
        return []
    counters = sync["counters"]
    errors = {k: v for k, v in counters.items() if k not in ("sent", "messages") and v}
    return [
        f"sync        {'connected to ' + str(sync['broker']) if sync['connected'] else 'not connected'}"
        f", {sync['send_rate']:.0f} records/s, sent {counters.get('sent', 0)}"
        f" in {counters.get('messages', 0)} messages"
        + (", " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) if errors else "")
        + (f", last error: {sync['last_error']}" if sync.get("last_error") else "")
    ]


def _outbox_lines(outbox: dict[str, Any] | None) -> list[str]:
    if not outbox:
        return []
    lines = []
    if outbox.get("disk_low_since"):
        since = time.strftime("%H:%M", time.localtime(outbox["disk_low_since"]))
        lines.append(f"outbox      disk low since {since}, {_size(outbox.get('disk_free') or 0)} free "
                     f"(below buffer.min_free): new records refused, {outbox.get('refused', 0)} "
                     "so far (dropped disk_low)")
    if outbox.get("failing_since"):
        since = time.strftime("%H:%M", time.localtime(outbox["failing_since"]))
        what = "disk full" if outbox.get("disk_full") else "commits failing"
        lines.append(f"outbox      {what} since {since}, {outbox.get('held_in_memory', 0)} records held "
                     f"in memory (last error: {outbox.get('last_error')})")
    return lines


def _clock_lines(clock: dict[str, Any] | None) -> list[str]:
    if not clock or "synchronised" not in clock:
        return []
    line = "clock       " + ("synchronised" if clock["synchronised"] else "unsynchronised")
    line += f", {clock['steps']} steps"
    if clock.get("last_step_s") is not None and clock.get("last_step_at") is not None:
        step = clock["last_step_s"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock["last_step_at"]))
        line += f", last {'forward' if step > 0 else 'back'} by {abs(step):.1f} s at {when}"
    return [line]


def _remote_lines(remote: dict[str, Any] | None) -> list[str]:
    if not remote:
        return []
    config = remote["config"]
    running = f"remote v{config['version']}" if config.get("source") == "remote" else "the file"
    line = f"config      running {running}" + (" (on trial)" if config.get("trial") else "")
    last = config.get("last")
    if last:
        line += f"; last remote v{last['version']}: {last['result']}"
        if last.get("errors"):
            line += " (" + "; ".join(
                f"{e['path']}: {e['reason']}" if e["path"] else e["reason"] for e in last["errors"][:5]
            ) + ")"
    return [line]


_EPOCH = datetime(1970, 1, 1)  # naive: the arithmetic is in UTC, printed with a Z


def _iso(ts: float) -> str | None:
    """UTC ISO 8601 with milliseconds; None beyond the years 1 to 9999 (replay takes any time).

    Counted from the epoch rather than by the C library's gmtime: 32-bit ARM's time_t (Raspberry
    Pi OS armhf) ends in January 2038, and a reading's time may lie beyond it."""
    whole = math.floor(ts)
    try:
        moment = _EPOCH + timedelta(seconds=whole)
    except OverflowError:
        return None
    return moment.isoformat(timespec="seconds") + f".{int((ts - whole) * 1000):03d}Z"


def _when(at: float) -> str:
    """A local date and time, the one time format of the command line."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.0f} {unit}"
    return f"{n} bytes"


def _ago(at: float | None) -> str:
    return "?" if at is None else f"{time.time() - at:.0f} s ago"


