"""``edge-cloud``: the cloud ingest and its JSON API."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from agent import __version__
from agent.config import BrokerLogin
from agent.extras import require_or_exit
from cloud_sync.server.cli_config import config
from cloud_sync.server.console.cli_options import console_options, console_settings
from cloud_sync.server.console.cli_users import user


@click.group()
@click.version_option(__version__, prog_name="edge-cloud")
def main() -> None:
    """Edge Cloud: ingest every device's summaries into one store, and serve the console's API."""


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


@main.command()
@click.option("--broker", required=True, help="The cloud broker: mqtt://host:port or mqtts://host:port.")
@click.option("--db", "db_url", default="sqlite:///edge-cloud.db", show_default=True,
              help="sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db[?schema=s].")
@click.option("--http", "http", default="127.0.0.1:8080", show_default=True,
              help="Where the console and its API listen.")
@click.option("--prefix", default="edge", show_default=True, help="Topic prefix the devices use.")
@click.option("--share-group", default=None,
              help="Share the subscription with other workers ($share/<group>/...).")
@click.option("--client-id", default=None, help="MQTT client id (default edge-cloud-<host>[-<group>]).")
@click.option("--tokens-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="API bearer tokens, one a line (besides EDGE_CLOUD_TOKEN, comma-separated).")
@click.option("--username", default=None, help="Broker user name.")
@click.option("--password-env", default=None, help="Environment variable holding the broker password.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the broker password.")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--mqtt-protocol", type=click.Choice(["auto", "5", "3.1.1"]), default="auto", show_default=True)
@click.option("--jetstream", default=None, metavar="NATS_URL[,NATS_URL...]",
              help="NATS only: read device data from a JetStream consumer shared by the workers "
                   "(named after --share-group); needs the `nats` extra. See docs/scale.md.")
@click.option("--probe/--no-probe", "probe_broker", default=True, show_default=True,
              help="Try the broker's features at start-up ($share/, retained, sizes) and fall back.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="INFO")
@console_options
def serve(
    broker: str, db_url: str, http: str, prefix: str, share_group: str | None, client_id: str | None,
    tokens_file: Path | None, username: str | None, password_env: str | None,
    password_file: Path | None, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None,
    mqtt_protocol: str, jetstream: str | None, probe_broker: bool, log_level: str, **console: Any,
) -> None:
    """Ingest from the broker into the store and serve the JSON API until SIGTERM/SIGINT."""
    if jetstream:
        require_or_exit("edge-cloud serve", "nats", what="--jetstream")
    # the console's every page needs these; psycopg only a postgresql:// store
    require_or_exit("edge-cloud serve", "cloud", ("starlette", "uvicorn", "jinja2", "argon2"))
    if db_url.startswith(("postgresql:", "postgres:")):
        require_or_exit("edge-cloud serve", "cloud", ("psycopg",), what="a postgresql:// store")
    logging.basicConfig(level=log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from cloud_sync.server.serve import (  # starlette, uvicorn and psycopg stay out of --help
        HttpStartError,
        serve_forever,
    )
    from cloud_sync.server.store import StoreError, open_store
    from cloud_sync.server.web import load_tokens

    host, port = _host_port(http)
    servers = [url.strip() for url in jetstream.split(",") if url.strip()] if jetstream else None
    try:
        login = BrokerLogin(
            url=broker, username=username, password_env=password_env, password_file=password_file,
            tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
        )
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "broker"
            click.echo(f"--{where.replace('_', '-')}: {error['msg'].removeprefix('Value error, ')}", err=True)
        sys.exit(2)
    try:
        tokens = load_tokens(tokens_file)
    except ValueError as exc:
        click.echo(f"--tokens-file: {exc}", err=True)
        sys.exit(2)
    settings = console_settings(host, **console)
    try:
        store = open_store(db_url)
    except StoreError as exc:
        click.echo(f"--db: {exc}", err=True)
        sys.exit(1)
    store.history_step, store.history_keep = console["history_step"], console["history_days"] * 86400.0
    client_id = client_id or "-".join(filter(None, ["edge-cloud", socket.gethostname()[:40], share_group]))
    try:
        asyncio.run(serve_forever(
            store, login, tokens, host, port, settings, prefix=prefix, share_group=share_group,
            client_id=client_id, protocol_version=mqtt_protocol, jetstream=servers, probe_broker=probe_broker,
        ))
    except HttpStartError as exc:
        click.echo(f"--http: {exc}", err=True)
        sys.exit(1)


main.add_command(user)
main.add_command(config)
