"""``edge-agent backup`` and ``edge-agent restore``: a device's data directory, copied consistently.

The outbox is copied with SQLite's online backup API, page by page inside read transactions,
so a backup taken while the daemon writes is a consistent snapshot (no ``sqlite3`` tool needed,
and no torn copy of a WAL file). The few other files of the data directory (remote config
state, a source's retained-message memory) are small JSON files, copied as they are.

A restore needs the daemon stopped: the current outbox (with its WAL) is moved aside into
``before-restore-TIME/`` in the data directory, never deleted, and the backup is written in
its place with a new identity (see ``_new_identity``), owned like the data directory (a restore
run with sudo leaves no root-owned file that the service user cannot write).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from agent.cli.daemon import load_or_exit
from agent.cli.main import CONFIG_OPTION
from agent.errors import OutboxError
from agent.health.status import read_status
from agent.outbox.schema import DB_NAME

SIDE_FILES = ("-wal", "-shm", "-journal")
"""SQLite's companions of a database file: they belong to the file they sit beside."""
PAGES_PER_STEP = 256
"""Pages copied per step of the online backup; the daemon's writes get the lock in between."""


@click.command("backup")
@CONFIG_OPTION
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def backup(config_path: Path, dest: Path) -> None:
    """Copy the data directory to DEST (a new folder), consistently, while the daemon runs or not."""
    data_dir = load_or_exit(config_path).agent.data_dir
    source = data_dir / DB_NAME
    if not source.exists():
        _fail(f"{source}: no outbox yet: the agent has not run with this data_dir")
    if dest.exists() and any(dest.iterdir()):
        _fail(f"{dest}: not empty; give a new folder")
    try:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        copy_database(source, dest / DB_NAME, read_only=True)
        others = _copy_others(data_dir, dest)
    except (OSError, sqlite3.Error) as exc:
        # run as the service user, a folder it cannot create or a data directory it cannot read
        _fail(f"cannot back up {data_dir} to {dest}: {getattr(exc, 'strerror', None) or exc} "
              f"({getattr(exc, 'filename', None) or source}); give a folder the user running this "
              "can create, and run it as the data directory's owner or root")
    records, first, last = _summary(dest / DB_NAME)
    click.echo(f"backed up {data_dir} to {dest}: {DB_NAME} ({records} unsent records, seq {first}..{last}, "
               f"integrity ok) and {others} other files")


@click.command("restore")
@CONFIG_OPTION
@click.argument("src", type=click.Path(file_okay=False, exists=True, path_type=Path))
def restore(config_path: Path, src: Path) -> None:
    """Put a backup made by ``edge-agent backup`` back into the data directory (daemon stopped)."""
    data_dir = load_or_exit(config_path).agent.data_dir
    backup_db = src / DB_NAME
    if not backup_db.is_file():
        _fail(f"{src}: no {DB_NAME}: not a backup made by `edge-agent backup`")
    _check_integrity(backup_db)
    try:
        daemon = read_status(data_dir)["daemon"]
    except OutboxError:
        daemon = {"running": False}
    if daemon["running"]:
        _fail(f"the agent (pid {daemon['pid']}) is running: stop it first (sudo systemctl stop edge-agent)")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    aside = _move_aside(data_dir)
    copy_database(backup_db, data_dir / DB_NAME, read_only=False)
    _new_identity(data_dir / DB_NAME)
    others = _copy_others(src, data_dir)
    _own_like(data_dir)
    records, first, last = _summary(data_dir / DB_NAME)
    moved = f"; the previous outbox is in {aside}" if aside else ""
    click.echo(f"restored {src} into {data_dir}: {records} unsent records, seq {first}..{last}, "
               f"and {others} other files{moved}")


def copy_database(source: Path, target: Path, read_only: bool) -> None:
    """SQLite's online backup of ``source`` into a new ``target``, checked before it is renamed
    into place (a half-written copy never stands under the final name)."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    uri = f"file:{source}?mode=ro" if read_only else f"file:{source}"
    src = sqlite3.connect(uri, uri=True)
    dst = sqlite3.connect(partial)
    try:
        src.execute("PRAGMA busy_timeout=5000")
        src.backup(dst, pages=PAGES_PER_STEP, sleep=0.01)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no WAL beside it
    finally:
        dst.close()
        src.close()
    _check_integrity(partial)
    partial.chmod(0o600)  # unsent data: as private as the outbox itself
    os.replace(partial, target)


def _new_identity(path: Path) -> None:
    """Forget the outbox's epoch; the agent makes a new one when it opens the file.

    The cloud may hold seqs past the backup's from the days between the backup and the restore.
    Under the old identity the agent would number new records into that range and the ingest
    would take them for repeats: lost. Under a new one the cloud renumbers the outbox after what
    it holds (as for a wiped SD card), so nothing is lost; a record that reached the cloud after
    the backup was taken is sent once more."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DELETE FROM meta WHERE key = 'epoch'")
    finally:
        conn.close()


def _check_integrity(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        _fail(f"{path}: not a readable SQLite database: {exc}")
    finally:
        conn.close()
    if result != "ok":
        _fail(f"{path}: integrity check failed: {result}")


def _summary(path: Path) -> tuple[int, int | None, int | None]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        count, first, last = conn.execute("SELECT count(*), min(seq), max(seq) FROM outbox").fetchone()
    finally:
        conn.close()
    return int(count), first, last


def _copy_others(source_dir: Path, target_dir: Path) -> int:
    """Every file but the outbox and its SQLite companions (and earlier set-aside outboxes)."""
    copied = 0
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if not path.is_file() or relative.parts[0].startswith("before-restore-"):
            continue
        if path.name == DB_NAME or (path.name.startswith(DB_NAME) and path.name[len(DB_NAME):] in (
            *SIDE_FILES, ".partial"
        )):
            continue
        (target_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target_dir / relative)
        copied += 1
    return copied


def _move_aside(data_dir: Path) -> Path | None:
    present = [path for side in ("", *SIDE_FILES) if (path := data_dir / (DB_NAME + side)).exists()]
    if not present:
        return None
    aside = data_dir / time.strftime("before-restore-%Y%m%dT%H%M%S")
    aside.mkdir(mode=0o700)
    for path in present:  # the WAL goes with its database: it must never meet the restored one
        os.replace(path, aside / path.name)
    return aside


def _own_like(data_dir: Path) -> None:
    """Files written by root (sudo) get the data directory's owner, so the service can write them."""
    if os.geteuid() != 0:
        return
    owner = data_dir.stat()
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, owner.st_uid, owner.st_gid)


def _fail(message: str) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(1)
