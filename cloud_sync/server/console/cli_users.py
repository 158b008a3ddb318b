"""``edge-cloud user add|remove|list``: the console's users file.

``cloud_sync.server.console.users`` (argon2-cffi, the ``cloud`` extra) loads only when a command runs,
so that ``edge-cloud --help`` works on any install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.extras import require_or_exit

USERS_OPTION = click.option(
    "--users", "users_file", required=True, envvar="EDGE_CLOUD_USERS",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The users file (NAME:ARGON2-HASH lines); also EDGE_CLOUD_USERS.",
)


@click.group()
def user() -> None:
    """Console users: who may sign in (passwords are stored as Argon2id hashes)."""


@user.command()
@click.argument("name")
@USERS_OPTION
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of prompting.")
def add(name: str, users_file: Path, password_stdin: bool) -> None:
    """Add NAME, or set a new password for NAME (their open sessions end)."""
    require_or_exit("edge-cloud user add", "cloud", ("argon2",))
    from cloud_sync.server.console.users import (
        MIN_PASSWORD,
        UsersError,
        hash_password,
        read_users,
        write_users,
    )

    try:
        users = read_users(users_file) if users_file.exists() else {}
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt(f"Password for {name} (at least {MIN_PASSWORD} characters)",
                                    hide_input=True, confirmation_prompt=True)
        existed = name in users
        users[name] = hash_password(name, password)
        write_users(users_file, users)
    except UsersError as exc:
        click.echo(f"edge-cloud user add: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{'changed the password of' if existed else 'added'} {name} in {users_file}")


@user.command()
@click.argument("name")
@USERS_OPTION
def remove(name: str, users_file: Path) -> None:
    """Remove NAME (their open sessions end within seconds)."""
    require_or_exit("edge-cloud user remove", "cloud", ("argon2",))
    from cloud_sync.server.console.users import UsersError, read_users, write_users

    try:
        users = read_users(users_file)
        if users.pop(name, None) is None:
            click.echo(f"edge-cloud user remove: no user {name!r} in {users_file}", err=True)
            sys.exit(1)
        write_users(users_file, users)
    except UsersError as exc:
        click.echo(f"edge-cloud user remove: {exc}", err=True)
        sys.exit(2)
    click.echo(f"removed {name} from {users_file}")


@user.command(name="list")
@USERS_OPTION
def list_users(users_file: Path) -> None:
    """Print the user names, one a line."""
    require_or_exit("edge-cloud user list", "cloud", ("argon2",))
    from cloud_sync.server.console.users import UsersError, read_users

    try:
        names = sorted(read_users(users_file))
    except UsersError as exc:
        click.echo(f"edge-cloud user list: {exc}", err=True)
        sys.exit(2)
    for name in names:
        click.echo(name)
