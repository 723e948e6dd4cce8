"""``shmpamt db list|show|clear``: the failure database from the command line.

Also the ``--db`` option the explore and campaign commands share. Light: it
reads JSON files, so it loads none of the rig.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from shmpamt.config import check_variant
from shmpamt.errors import DatabaseError, UsageError
from shmpamt.records.faildb import (
    DB_ENV,
    DEFAULT_DB,
    MIN_PREFIX,
    OFF,
    BadEntry,
    Entry,
    FailureDB,
    resolve_db,
)

DB_OPTION = click.option(
    "--db",
    "db",
    default=None,
    metavar="PATH",
    help=f"Failure database: its schedules are replayed first, new failures are stored "
    f"there. Default: ${DB_ENV}, else {DEFAULT_DB} in the working directory; '{OFF}' for none.",
)


def _open(db: str | None) -> FailureDB:
    try:
        path = resolve_db(db)
    except UsageError as e:
        raise click.UsageError(f"--db: {e}") from None
    if path is None:
        raise click.UsageError(f"the failure database is off (--db or ${DB_ENV} is '{OFF}')")
    return FailureDB(path)


@contextmanager
def _reading(fdb: FailureDB) -> Iterator[FailureDB]:
    """A database error is one line (exit 2); each unusable file one warning after."""
    try:
        yield fdb
    except DatabaseError as e:
        raise click.ClickException(str(e)) from None
    finally:
        _warn(fdb.broken)


def _warn(bad: list[BadEntry]) -> None:
    for b in bad:
        click.echo(f"warning: {b.warning()}", err=True)


def _one(fdb: FailureDB, key: str) -> Entry:
    """The entry KEY names, or one line saying there is none or which ones it could be."""
    matches = fdb.find(key)
    if len(matches) > 1:
        shown = ", ".join(f"{e.key} ({e.variant} {e.kind})" for e in matches[:10])
        more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
        raise click.ClickException(
            f"key {key!r} is ambiguous: {len(matches)} entries start with it: {shown}{more}"
        )
    if not matches:
        why = f" (at least {MIN_PREFIX} digits)" if len(key) < MIN_PREFIX else ""
        raise click.ClickException(f"no entry with key {key!r}{why} (see 'shmpamt db list')")
    return matches[0]


def _spec(variant: str | None) -> str | None:
    """A variant as entries record it (a variant file by its absolute path)."""
    return None if variant is None else check_variant(variant)


@click.group("db")
def db_command() -> None:
    """The failure database: every failing schedule found, replayed before each search."""


@db_command.command("list")
@DB_OPTION
@click.option("--variant", default=None, metavar="NAME", help="Only this variant's failures.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def db_list(db: str | None, variant: str | None, as_json: bool) -> None:
    """One line per stored failure: key, variant, kind, strategy, last seen."""
    with _reading(_open(db)) as fdb:
        entries = fdb.entries(_spec(variant))
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=1))
        return
    for e in entries:
        click.echo(f"{e.key}  {e.variant:24} {e.kind:20} {e.strategy:12} last seen {e.last_seen}")
    click.echo(f"{len(entries)} failure(s) in {fdb.root}")


@db_command.command("show")
@DB_OPTION
@click.argument("key")
def db_show(db: str | None, key: str) -> None:
    """Every field of one entry (KEY: its key or a unique prefix of at least 4 digits)."""
    with _reading(_open(db)) as fdb:
        e = _one(fdb, key)
    for name, value in e.to_dict().items():
        click.echo(f"{name:11} {value}")
    click.echo(f"{'replay':11} shmpamt replay {e.schedule}")


@db_command.command("clear")
@DB_OPTION
@click.argument("key", required=False)
@click.option("--variant", default=None, metavar="NAME", help="Only this variant's failures.")
@click.option("--yes", is_flag=True, help="Do not ask.")
def db_clear(db: str | None, key: str | None, variant: str | None, yes: bool) -> None:
    """Remove stored failures: all (unusable files too), one variant's, or the entry KEY
    (its key or a unique prefix). Only files inside the database's failures folder are
    removed, never through a link."""
    if key is not None and variant is not None:
        raise click.UsageError("give KEY or --variant, not both")
    fdb, spec = _open(db), _spec(variant)
    try:
        target = _one(fdb, key).key if key is not None else None
        what = (
            f"entry {target}" if target else f"{variant}'s failures" if variant else "every failure"
        )
        if not yes and sys.stdin.isatty():
            click.confirm(f"remove {what} from {fdb.root}?", abort=True)
        n = fdb.clear(spec, target)
    except DatabaseError as e:
        raise click.ClickException(str(e)) from None
    # the unusable files the clear removed are gone; the others are still skipped
    _warn([b for b in fdb.broken if os.path.lexists(b.path)])
    click.echo(f"removed {n} file(s) from {fdb.root}")
