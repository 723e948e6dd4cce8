"""``shmpamt db list|show|clear``: the failure database from the command line.

Also the ``--db`` option the explore and campaign commands share. Light: it
reads JSON files, so it loads none of the rig.
"""

from __future__ import annotations

import json
import sys

import click

from shmpamt.errors import UsageError
from shmpamt.records.faildb import DB_ENV, DEFAULT_DB, OFF, FailureDB, resolve_db

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


@click.group("db")
def db_command() -> None:
    """The failure database: every failing schedule found, replayed before each search."""


@db_command.command("list")
@DB_OPTION
@click.option("--variant", default=None, metavar="NAME", help="Only this variant's failures.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def db_list(db: str | None, variant: str | None, as_json: bool) -> None:
    """One line per stored failure: key, variant, kind, steps, strategy, last seen."""
    fdb = _open(db)
    entries = fdb.entries(variant)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], indent=1))
        return
    for e in entries:
        click.echo(f"{e.key}  {e.variant:24} {e.kind:20} {e.strategy:12} last seen {e.last_seen}")
    for p in fdb.broken:
        click.echo(f"unreadable entry: {p}", err=True)
    click.echo(f"{len(entries)} failure(s) in {fdb.root}")


@db_command.command("show")
@DB_OPTION
@click.argument("key")
def db_show(db: str | None, key: str) -> None:
    """Every field of one entry (KEY: its key or a unique prefix of at least 4 digits)."""
    e = _open(db).get(key)
    if e is None:
        raise click.UsageError(f"no entry with key {key!r} (see 'shmpamt db list')")
    for name, value in e.to_dict().items():
        click.echo(f"{name:11} {value}")
    click.echo(f"{'replay':11} shmpamt replay {e.schedule}")


@db_command.command("clear")
@DB_OPTION
@click.option("--variant", default=None, metavar="NAME", help="Only this variant's failures.")
@click.option("--yes", is_flag=True, help="Do not ask.")
def db_clear(db: str | None, variant: str | None, yes: bool) -> None:
    """Remove stored failures (all, or one variant's)."""
    fdb = _open(db)
    what = f"{variant}'s failures" if variant else "every failure"
    if not yes and sys.stdin.isatty():
        click.confirm(f"remove {what} from {fdb.root}?", abort=True)
    click.echo(f"removed {fdb.clear(variant)} entries from {fdb.root}")
