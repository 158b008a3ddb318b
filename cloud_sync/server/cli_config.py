"""``edge-cloud config``: keys for signed remote configs, and signing one (offline, ideally)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TextIO

import click

from agent.extras import require_or_exit
from cloud_sync.protocol import MAX_CONFIG_TEXT, DesiredConfig


@click.group()
def config() -> None:
    """Signed desired configs: make a key pair, sign a config for the console to publish."""


@config.command()
@click.argument("private_key", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("public_key", type=click.Path(dir_okay=False, path_type=Path))
def keygen(private_key: Path, public_key: Path) -> None:
    """Write a new Ed25519 key pair: PRIVATE_KEY (mode 600; keep it off the console's server)
    and PUBLIC_KEY (for each device's [remote] public_key_file)."""
    require_or_exit("edge-cloud config keygen", "signing")
    from cloud_sync import signing

    if private_key.exists():
        raise click.ClickException(f"{private_key} exists: not overwriting a key")
    private, public = signing.generate()
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(private)
    public_key.write_bytes(public)
    click.echo(f"wrote {private_key} (secret) and {public_key}", err=True)


@config.command()
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The Ed25519 private key (PEM).")
@click.option("--version", "version", required=True, type=click.IntRange(min=1),
              help="The document's version: above every version the device has acted on.")
@click.option("--device", default=None, help="The one device it is for (default: any).")
@click.option("--by", "issued_by", default=None, help="Who issues it.")
@click.argument("toml_file", type=click.File("r"))
def sign(
    key_path: Path, version: int, device: str | None, issued_by: str | None, toml_file: TextIO
) -> None:
    """Print the signed JSON document for TOML_FILE (paste it into the console's panel, or POST
    it to /api/devices/<id>/config)."""
    require_or_exit("edge-cloud config sign", "signing")
    from cloud_sync import signing

    text = toml_file.read()
    if len(text) > MAX_CONFIG_TEXT:
        raise click.ClickException(f"{toml_file.name}: over {MAX_CONFIG_TEXT} characters")
    try:
        key = signing.load_private_key(key_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    doc = signing.sign(DesiredConfig(version, text, device, int(time.time()), issued_by), key)
    sys.stdout.write(doc.encode().decode() + "\n")
