"""``edge-sim``: simulated sensors, fleets and link faults."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from simulators.addresses import AddressError, broker_address, host_port
from simulators.publisher import PublishError
from simulators.sensor_set import SensorOptions
from simulators.sensors import run_sensors
from simulators.signals import KINDS


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail on stderr.")
def main(verbose: bool) -> None:
    """Simulated sensors, fleets and link faults for trying and testing Edge Agent."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="Broker URL.")
@click.option("--sensors", "count", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Readings per second for each sensor.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds to publish for.")
@click.option("--qos", type=click.IntRange(0, 2), default=1, show_default=True)
@click.option("--seed", type=int, default=None, help="Same seed, same readings (random if unset).")
@click.option("--malformed", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of payloads that are broken on purpose.")
@click.option("--prefix", default="sensors/", show_default=True, help="Topic prefix.")
@click.option("--kinds", default=",".join(KINDS), show_default=True,
              help="Sensor kinds, assigned to sensors in turn.")
@click.option("--faults/--no-faults", default=True, show_default=True,
              help="Spikes, one stuck sensor, dropouts.")
@click.option("--time-scale", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Signal time per second (3600: a day in 24 s).")
@click.option("--window", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Unacknowledged publishes allowed at QoS 1 and 2.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Publishing processes sharing the sensors, for rates one process cannot keep.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def sensors(broker: str, count: int, rate: float, duration: float, qos: int, seed: int | None,
            malformed: float, prefix: str, kinds: str, faults: bool, time_scale: float,
            window: int, processes: int, as_json: bool) -> None:
    """Publish realistic readings to sensors/<sensor-id>, then report what was sent."""
    try:
        host, port = broker_address(broker)
        options = SensorOptions(
            host=host, port=port, sensors=count, rate=rate, duration=duration, qos=qos,
            seed=seed, malformed=malformed, prefix=prefix,
            kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), faults=faults,
            time_scale=time_scale, window=window, processes=processes,
        )
        report = run_sensors(options)
    except (AddressError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    except PublishError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        click.echo(report.summary())


@main.command()
@click.option("--listen", required=True, help="HOST:PORT to accept on (loopback only).")
@click.option("--target", required=True, help="HOST:PORT to forward to (the broker).")
@click.option("--control", default=None, help="HOST:PORT for line commands (loopback only).")
@click.option("--schedule", default="", help='Mode changes by time, e.g. "60:halfopen,90:pass".')
def link(listen: str, target: str, control: str | None, schedule: str) -> None:
    """A TCP proxy that passes, delays, throttles, drops or goes half-open on command."""
    from simulators.link_cli import serve_link  # asyncio and the proxy only when asked for

    try:
        asyncio.run(serve_link(host_port(listen), host_port(target),
                               host_port(control) if control else None, schedule))
    except (AddressError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("control")
@click.argument("command", nargs=-1, required=True)
def linkctl(control: str, command: tuple[str, ...]) -> None:
    """Send COMMAND (pass, delay MS, throttle BYTES_PER_S, drop, halfopen, status) to a link
    proxy's CONTROL address and print its answer."""
    from simulators.link_control import send_command

    try:
        answer = send_command(host_port(control), " ".join(command))
    except (AddressError, OSError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(answer)
    if not answer.startswith("ok"):
        sys.exit(1)


@main.command()
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True,
              help="The cloud broker's URL.")
@click.option("--devices", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to run (until Ctrl-C if unset).")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds between a device's window summaries.")
@click.option("--sensors", type=click.IntRange(min=1), default=3, show_default=True,
              help="Summaries per device and interval.")
@click.option("--status-interval", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True)
@click.option("--topic-prefix", default="edge", show_default=True)
@click.option("--id-prefix", default="sim", show_default=True, help="Device ids are PREFIX-00042.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--connect-rate", type=click.FloatRange(min=0, min_open=True), default=500.0,
              show_default=True, help="New connections per second (at start and after outages).")
@click.option("--schedule", default="", help='Link outages, e.g. "60:offline=0.1,90:online".')
@click.option("--compression", type=click.Choice(["auto", "zstd", "zlib", "none"]),
              default="zlib", show_default=True,
              help="zstd costs about 50 KB of memory per device.")
@click.option("--ack-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds without an ack before a device sends again.")
@click.option("--reconnect-max", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds: the reconnect delay doubles from 1 s up to this (full jitter).")
@click.option("--drain", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="At the end, seconds to wait for the ingest to acknowledge every backlog.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def fleet(broker: str, devices: int, duration: float | None, interval: float, sensors: int,
          status_interval: float, topic_prefix: str, id_prefix: str, seed: int,
          connect_rate: float, schedule: str, compression: str, ack_timeout: float,
          reconnect_max: float, drain: float, as_json: bool) -> None:
    """N virtual devices speaking the sync protocol to a cloud broker."""
    # Imported here: the fleet needs cloud_sync, which sensors and link do without.
    from simulators.fleet import FleetOptions
    from simulators.fleet_cli import serve_fleet
    from simulators.fleet_device import DeviceOptions

    try:
        host, port = broker_address(broker)
        options = FleetOptions(
            devices=devices, id_prefix=id_prefix, seed=seed, duration=duration,
            connect_rate=connect_rate, schedule=schedule, drain=drain,
            device=DeviceOptions(host=host, port=port, topic_prefix=topic_prefix,
                                 interval=interval, sensors=sensors, ack_timeout=ack_timeout,
                                 reconnect_max=reconnect_max,
                                 status_interval=status_interval, compression=compression),
        )
    except (AddressError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    report = asyncio.run(serve_fleet(options))
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in dataclasses.asdict(report).items()))


@main.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep all state (logs, outboxes, the cloud store) in this folder.")
@click.option("--cut-after", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds before one gateway's link to the cloud is cut.")
@click.option("--cut-for", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds the link stays cut.")
@click.option("--http-port", type=click.IntRange(1, 65535), default=None,
              help="The console's port (a free one by default).")
def demo(keep: Path | None, cut_after: float, cut_for: float, http_port: int | None) -> None:
    """Brokers, cloud ingest and console, three agents and their sensors; Ctrl-C stops it all."""
    from simulators.demo import main as run_demo

    run_demo(keep, cut_after, cut_for, http_port)
