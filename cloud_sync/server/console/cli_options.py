"""The console's options of ``edge-cloud serve``, and the settings they make."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from cloud_sync.server.console.app import ConsoleSettings

F = TypeVar("F", bound=Callable[..., Any])


def console_options(command: F) -> F:
    options = [
        click.option("--users", "users_file", envvar="EDGE_CLOUD_USERS",
                     type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Console users (edge-cloud user add NAME --users FILE); also EDGE_CLOUD_USERS."),
        click.option("--allowed-host", "allowed_hosts", multiple=True,
                     help="A host name the console answers to (repeat; '*' for any). Default: the "
                          "loopback names when listening on loopback, any otherwise."),
        click.option("--history-step", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
                     help="Seconds per point of each device's status history."),
        click.option("--history-days", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
                     help="Days of status history kept."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def console_settings(
    listen_host: str, users_file: Path | None, allowed_hosts: tuple[str, ...], **_: Any
) -> ConsoleSettings:
    """Settings from the options; exits 2 naming the option when the users file is unreadable."""
    from cloud_sync.server.console.app import ConsoleSettings
    from cloud_sync.server.console.security import LOOPBACK_NAMES, is_loopback
    from cloud_sync.server.console.users import UsersError, read_users

    if users_file is not None:
        try:
            read_users(users_file)
        except UsersError as exc:
            click.echo(f"--users: {exc}", err=True)
            sys.exit(2)
    hosts: tuple[str, ...] | None = tuple(allowed_hosts) or None
    if hosts is None and is_loopback(listen_host):
        hosts = LOOPBACK_NAMES
    return ConsoleSettings(users_file=users_file, allowed_hosts=hosts)
