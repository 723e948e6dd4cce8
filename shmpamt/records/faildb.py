"""The failure database: every failing schedule ever found, kept to be replayed first.

A directory (``.shmpamt/`` by default) with one JSON file per failure under
``failures/``, named by a hash of the failure's key (variant, its source hash,
violation kind, schedule string). Writers never lock: an entry is written to a
private temp file and published with ``os.link``, which fails if the name
exists, so two processes (xdist workers, campaign tasks) that store the same
failure at once store it once; a later sighting rewrites the entry through
``os.replace`` with only ``last_seen`` changed. Readers see whole files only.

Standard library and the schedule grammar only: the CLI's ``db`` commands and
the pytest plugin use it without loading the rig.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from shmpamt.errors import ScheduleError, UsageError
from shmpamt.records.schedule_string import Schedule

#: environment variable naming the database directory (``off`` disables it)
DB_ENV: Final = "SHMPAMT_DB"
#: the database a command uses when neither ``--db`` nor ``SHMPAMT_DB`` says otherwise
DEFAULT_DB: Final = ".shmpamt"
#: the value of ``--db`` / ``SHMPAMT_DB`` that turns the database off
OFF: Final = "off"
FORMAT: Final = 1
_SUBDIR: Final = "failures"


def resolve_db(option: str | None) -> str | None:
    """The database directory a front end uses: ``--db``, else ``SHMPAMT_DB``, else
    ``.shmpamt``; ``off`` in either place means none (None)."""
    value = option if option is not None else os.environ.get(DB_ENV, DEFAULT_DB)
    value = value.strip()
    if value == OFF:
        return None
    if not value:
        raise UsageError("db must name a directory (or 'off')", "db")
    return value


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Entry:
    """One stored failure."""

    variant: str
    #: short source hash of a variant file, from the schedule string ("" for built-ins)
    source: str
    kind: str
    #: the minimised, replayable schedule string
    schedule: str
    strategy: str
    first_seen: str
    last_seen: str

    @property
    def key(self) -> str:
        return entry_key(self.variant, self.source, self.kind, self.schedule)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        fields = ("variant", "source", "kind", "schedule", "strategy", "first_seen", "last_seen")
        if d.get("format") != FORMAT or not all(isinstance(d.get(f), str) for f in fields):
            raise ValueError("not a shmpamt failure entry of format 1")
        return cls(**{f: d[f] for f in fields})


def entry_key(variant: str, source: str, kind: str, schedule: str) -> str:
    """The de-duplication key as 16 hex digits: also the entry's file name."""
    raw = "\0".join((variant, source, kind, schedule)).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class FailureDB:
    """``FailureDB(".shmpamt").add("use_without_pamt", "s1:kai:...", "pct")``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / _SUBDIR
        #: files that could not be read as entries by the last ``entries()``
        self.broken: list[Path] = []

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def _write_new(self, entry: Entry, final: Path, replace_existing: bool) -> bool:
        """Publish ``entry`` at ``final``: link (only if absent) or replace; True if written."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            tmp.write_text(json.dumps(entry.to_dict(), indent=1) + "\n")
            if replace_existing:
                os.replace(tmp, final)
                return True
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def add(self, kind: str, schedule: str, strategy: str, *, seen: str | None = None) -> bool:
        """Store one failing schedule; True if it was new, False if it was already there
        (then only its ``last_seen`` moves)."""
        try:
            s = Schedule.parse(schedule)
        except ScheduleError as e:
            raise UsageError(f"cannot store a malformed schedule: {e}") from None
        when = seen or now_iso()
        entry = Entry(s.variant, s.source, kind, s.encode(), strategy, when, when)
        path = self._path(entry.key)
        if self._write_new(entry, path, replace_existing=False):
            return True
        self.touch(entry.key, when)
        return False

    def touch(self, key: str, seen: str | None = None) -> None:
        """Move an entry's ``last_seen`` (a failure seen again, or a replay still failing)."""
        old = self.get(key)
        if old is not None:
            new = replace(old, last_seen=max(old.last_seen, seen or now_iso()))
            self._write_new(new, self._path(key), replace_existing=True)

    def get(self, key: str) -> Entry | None:
        """The entry whose key is ``key`` or starts with it (at least 4 hex digits)."""
        if len(key) < 4:
            return None
        path = self._path(key)
        if not path.exists():
            matches = [e for e in self.entries() if e.key.startswith(key)]
            return matches[0] if len(matches) == 1 else None
        try:
            return Entry.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def _files(self) -> Iterator[Path]:
        if self.dir.is_dir():
            yield from sorted(p for p in self.dir.iterdir() if p.suffix == ".json")

    def entries(self, variant: str | None = None) -> list[Entry]:
        """Every stored failure (of ``variant`` only, when given), oldest first."""
        out: list[Entry] = []
        self.broken = []
        for p in self._files():
            try:
                e = Entry.from_dict(json.loads(p.read_text()))
            except FileNotFoundError:
                continue  # cleared by another process meanwhile
            except (OSError, ValueError):
                self.broken.append(p)
                continue
            if variant is None or e.variant == variant:
                out.append(e)
        return sorted(out, key=lambda e: (e.first_seen, e.variant, e.kind, e.schedule))

    def clear(self, variant: str | None = None) -> int:
        """Remove the entries (of ``variant`` only, when given); how many were removed."""
        n = 0
        for e in self.entries(variant):
            with contextlib.suppress(FileNotFoundError):
                self._path(e.key).unlink()
                n += 1
        if variant is None:
            for p in self.broken:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    n += 1
        return n
