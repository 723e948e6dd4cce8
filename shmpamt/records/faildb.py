"""The failure database: every failing schedule ever found, kept to be replayed first.

A directory (``.shmpamt/`` by default) with one JSON file per failure under
``failures/``, named by a hash of the failure's key (variant, its source hash,
violation kind, schedule string). Writers never lock: an entry is written to a
private temp file and published with ``os.link``, which fails if the name
exists, so two processes (xdist workers, campaign tasks) that store the same
failure at once store it once; a later sighting rewrites the entry through
``os.replace`` with only ``last_seen`` changed. Readers see whole files only.

The database lives in repositories and CI caches, so every file in it is
untrusted input. ``failures/`` is opened without following a link (a link
there is a :class:`~shmpamt.errors.DatabaseError`, never a way to reach another
folder) and every name is read, written and removed relative to that open
folder. An entry is used only if it is a regular file (never a link, a FIFO or
a device), at most :data:`MAX_ENTRY_BYTES`, a JSON object of format 1 whose
kind is a known violation and whose schedule parses and names the same variant
and source hash as the entry's own fields. Anything else is a :class:`BadEntry`:
skipped with one warning naming the file, and removed by ``clear``.

Standard library, the schedule grammar and the violation catalogue only: the
CLI's ``db`` commands and the pytest plugin use it without loading the rig.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from shmpamt.errors import DatabaseError, ScheduleError, UsageError
from shmpamt.records.publish import publish, reason
from shmpamt.records.schedule_string import Schedule
from shmpamt.records.variant_files import names_file
from shmpamt.records.violations import VIOLATIONS

#: environment variable naming the database directory (``off`` disables it)
DB_ENV: Final = "SHMPAMT_DB"
#: the database a command uses when neither ``--db`` nor ``SHMPAMT_DB`` says otherwise
DEFAULT_DB: Final = ".shmpamt"
#: the value of ``--db`` / ``SHMPAMT_DB`` that turns the database off
OFF: Final = "off"
FORMAT: Final = 1
#: how every note about the database on a result begins
DB_NOTE: Final = "failure database"
#: a larger file is not read: an entry holds one schedule (a million steps fit)
MAX_ENTRY_BYTES: Final = 16 << 20
#: shortest key prefix ``find`` accepts
MIN_PREFIX: Final = 4
_SUBDIR: Final = "failures"
_FIELDS: Final = ("variant", "source", "kind", "schedule", "strategy", "first_seen", "last_seen")
#: the fields shown as they are (kind, variant and source are checked on their own)
_LABELS: Final = ("strategy", "first_seen", "last_seen")
_MAX_FIELD: Final = 200
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
    def from_dict(cls, d: object) -> Entry:
        """The entry ``d`` describes; ValueError saying why it is not a usable one."""
        if not isinstance(d, dict):
            raise ValueError(f"it holds a JSON {type(d).__name__}, not an entry object")
        if d.get("format") != FORMAT or not all(isinstance(d.get(f), str) for f in _FIELDS):
            raise ValueError("it is not a shmpamt failure entry of format 1")
        if not all(d[f].isprintable() and len(d[f]) <= _MAX_FIELD for f in _LABELS):
            raise ValueError(f"one of {', '.join(_LABELS)} is too long or not printable")
        e = cls(**{f: d[f] for f in _FIELDS})
        if not e.variant.isprintable():
            raise ValueError(f"its variant {_short(e.variant)} is not printable")
        if e.kind not in VIOLATIONS:
            raise ValueError(f"its kind {_short(e.kind)} is not a known violation")
        try:
            s = Schedule.parse(e.schedule)
        except ScheduleError as err:
            raise ValueError(f"its schedule is malformed: {_cut(str(err), 120)}") from None
        # Invariant: an entry is replayed only as the variant its schedule names, so the
        # two must agree (a label that lies would replay another variant's failure).
        if s.variant != e.variant:
            raise ValueError(
                f"its schedule is of variant {_short(s.variant)}, "
                f"not {_short(e.variant)} as the entry says"
            )
        if s.source != e.source:
            raise ValueError(
                f"its schedule carries source hash {s.source or 'none'}, "
                f"the entry {_short(e.source) if e.source else 'none'}"
            )
        return e


@dataclass(frozen=True)
class BadEntry:
    """A file in ``failures/`` that is not a usable entry, and why."""

    path: Path
    why: str
    #: the variant the file says it belongs to, when it says one ("" otherwise)
    label: str = ""

    def warning(self) -> str:
        return f"skipped {self.path}: {self.why}"


def _of(recorded: str, source: str, variant: str) -> bool:
    """Whether an entry that names ``recorded`` (with source hash ``source``) is one of
    ``variant``: the same name, or (a variant file) found on that file, whatever path
    the schedule names it by (see records/variant_files.py)."""
    return recorded == variant or names_file(recorded, source, variant)


def _cut(text: str, limit: int) -> str:
    """Text from an untrusted file cut to fit in one line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _short(text: str, limit: int = 60) -> str:
    """A value from an untrusted file, quoted (control characters escaped) and cut."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def entry_key(variant: str, source: str, kind: str, schedule: str) -> str:
    """The de-duplication key as 16 hex digits: also the entry's file name."""
    raw = "\0".join((variant, source, kind, schedule)).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class FailureDB:
    """``FailureDB(".shmpamt").add("use_without_pamt", "s1:kai:...", "pct")``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / _SUBDIR
        #: files that could not be used as entries by the last ``entries()``
        self.broken: list[BadEntry] = []

    # -- the folder ----------------------------------------------------------------

    @contextmanager
    def _folder(self, create: bool) -> Iterator[int | None]:
        """``failures/`` open as a folder, never through a link; None when it does not
        exist and ``create`` is False. Raises DatabaseError (OSError while creating)."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            with suppress(FileExistsError):
                os.mkdir(self.dir)
        fd = self._open_folder(missing_ok=not create)
        if fd is None:
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    def _open_folder(self, missing_ok: bool) -> int | None:
        try:
            return os.open(self.dir, _DIR_FLAGS)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DatabaseError(
                    f"{self.dir} is a symbolic link or a file, not a folder: refusing to use it"
                ) from None
            raise DatabaseError(f"cannot read {self.dir}: {reason(e)}") from None

    def _scan(self) -> tuple[dict[str, tuple[Entry, list[str]]], list[BadEntry]]:
        """Every usable entry by key with the file names holding it, and every bad file."""
        found: dict[str, tuple[Entry, list[str]]] = {}
        bad: list[BadEntry] = []
        with self._folder(create=False) as fd:
            if fd is None:
                return found, bad
            try:
                names = sorted(n for n in os.listdir(fd) if n.endswith(".json"))
            except OSError as e:
                raise DatabaseError(f"cannot list {self.dir}: {reason(e)}") from None
            for name in names:
                if name.startswith("."):
                    continue  # a writer's temp file
                got = self._read(fd, name)
                if got is None:
                    continue  # removed by another process meanwhile
                if isinstance(got, BadEntry):
                    bad.append(got)
                    continue
                found.setdefault(got.key, (got, []))[1].append(name)
        return found, bad

    def _read(self, fd: int, name: str) -> Entry | BadEntry | None:
        """The entry in file ``name``, why it is not one, or None when it is gone."""
        path = self.dir / name
        try:
            st = os.lstat(name, dir_fd=fd)
            if not stat.S_ISREG(st.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                return BadEntry(path, f"it is {what}")
            f = os.open(name, _READ_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            return BadEntry(path, f"it cannot be read ({reason(e)})")
        try:
            st = os.fstat(f)
            # Invariant: only a regular file of bounded size is read (it may have been
            # swapped for a FIFO or a device since the lstat above).
            if not stat.S_ISREG(st.st_mode):
                return BadEntry(path, "it is not a regular file")
            if st.st_size > MAX_ENTRY_BYTES:
                return BadEntry(path, f"it is larger than {MAX_ENTRY_BYTES} bytes")
            raw = os.read(f, MAX_ENTRY_BYTES + 1)
        except OSError as e:
            return BadEntry(path, f"it cannot be read ({reason(e)})")
        finally:
            os.close(f)
        try:
            d = json.loads(raw)
        except RecursionError:
            return BadEntry(path, "its JSON is nested too deeply")
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
            return BadEntry(path, f"it is not JSON ({_cut(str(e), 80)})")
        label = d.get("variant") if isinstance(d, dict) else None
        try:
            return Entry.from_dict(d)
        except ValueError as e:
            return BadEntry(path, str(e), label if isinstance(label, str) else "")

    # -- writing ---------------------------------------------------------------------

    def _publish(self, entry: Entry, replace_existing: bool) -> bool:
        """Publish ``entry`` under its key: link (only if absent) or replace; True if written."""
        data = (json.dumps(entry.to_dict(), indent=1) + "\n").encode()
        try:
            with self._folder(create=True) as fd:
                assert fd is not None  # created above
                return publish(data, f"{entry.key}.json", dir_fd=fd, replace=replace_existing)
        except OSError as e:
            raise DatabaseError(f"{self.root} cannot be written ({reason(e)})") from None

    def add(self, kind: str, schedule: str, strategy: str, *, seen: str | None = None) -> bool:
        """Store one failing schedule; True if it was new, False if it was already there
        (then only its ``last_seen`` moves). Raises DatabaseError when it cannot write."""
        if kind not in VIOLATIONS:
            raise UsageError(f"cannot store a failure of unknown kind {_short(kind)}")
        try:
            s = Schedule.parse(schedule)
        except ScheduleError as e:
            raise UsageError(f"cannot store a malformed schedule: {e}") from None
        when = seen or now_iso()
        entry = Entry(s.variant, s.source, kind, s.encode(), strategy, when, when)
        if self._publish(entry, replace_existing=False):
            return True
        old = self._entry_at(entry.key)
        if old is None or old.key != entry.key:
            self._publish(entry, replace_existing=True)  # a bad file had taken its name
        else:
            self.touch(entry.key, when)
        return False

    def touch(self, key: str, seen: str | None = None) -> None:
        """Move an entry's ``last_seen`` (a failure seen again, or a replay still failing)."""
        old = self._entry_at(key)
        if old is not None and old.key == key:
            new = replace(old, last_seen=max(old.last_seen, seen or now_iso()))
            self._publish(new, replace_existing=True)

    def _entry_at(self, key: str) -> Entry | None:
        """The usable entry in file ``<key>.json``, if that file holds one."""
        with self._folder(create=False) as fd:
            got = None if fd is None else self._read(fd, f"{key}.json")
        return got if isinstance(got, Entry) else None

    # -- reading -------------------------------------------------------------------

    def entries(self, variant: str | None = None) -> list[Entry]:
        """Every stored failure (of ``variant`` only, when given: a variant file's by its
        absolute path), oldest first; the files that are not usable entries go to
        ``broken``. Raises DatabaseError."""
        found, self.broken = self._scan()
        out = [e for e, _ in found.values() if variant is None or _of(e.variant, e.source, variant)]
        return sorted(out, key=lambda e: (e.first_seen, e.variant, e.kind, e.schedule))

    def find(self, key: str) -> list[Entry]:
        """The entries whose key is ``key`` or starts with it (at least MIN_PREFIX
        characters): one, none, or several when the prefix is ambiguous."""
        if len(key) < MIN_PREFIX:
            return []
        entries = self.entries()
        exact = [e for e in entries if e.key == key]
        return exact or [e for e in entries if e.key.startswith(key)]

    def get(self, key: str) -> Entry | None:
        """The entry whose key is ``key`` or the only one that starts with it."""
        matches = self.find(key)
        return matches[0] if len(matches) == 1 else None

    def clear(self, variant: str | None = None, key: str | None = None) -> int:
        """Remove the entries (of ``variant`` only, or the one with exactly ``key``, when
        given) and the bad files (all, or those that name ``variant``); how many files
        were removed. Only names inside ``failures/`` are removed, never what a link
        there points to. Raises DatabaseError when one cannot be removed."""
        found, bad = self._scan()
        self.broken = bad
        names = [
            n
            for e, files in found.values()
            if (variant is None or _of(e.variant, e.source, variant))
            and (key is None or e.key == key)
            for n in files
        ]
        if key is None:
            names += [b.path.name for b in bad if variant is None or _of(b.label, "", variant)]
        n = 0
        with self._folder(create=False) as fd:
            if fd is None:
                return 0
            for name in names:
                try:
                    os.unlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise DatabaseError(
                        f"cannot remove {self.dir / name} ({reason(e)}); {n} removed before it"
                    ) from None
                n += 1
        return n
