"""Variant files in schedule strings: a short name that still finds its file.

A schedule string names a user's variant file (``mine.py:Mine``,
``patch/helpers.c``) by its path relative to the directory the schedule was
found in (or its absolute path when that is shorter) and the first 8 hex
digits of the SHA-256 of its source. Short enough to paste; to replay it from
any other directory, every run that makes such strings records the file's
absolute path under its hash in an index on this machine
(``$SHMPAMT_CACHE_DIR/variant-files/``, else ``$XDG_CACHE_HOME/shmpamt/...``,
else ``~/.cache/shmpamt/...``: one small text file per hash, one path a line).

:func:`locate` turns a recorded name back into a file, and never picks a file
whose source differs from the recorded hash without saying so:

1. an absolute path, or the relative path from the working directory, whose
   source has the recorded hash (or no hash was recorded);
2. else a path the index recorded for that hash whose source still has it;
3. else a file whose source changed since (here first, then the index's):
   it runs, with a note that the replay may not match;
4. else nothing: the caller says the file is neither here nor where it was
   recorded (a name without a hash that is no file here, such as the C twin
   ``rfc.c``, is left to the variant loader).

Standard library only: the CLI and the failure database use it without
loading the rig.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: the index's folder under the cache directory
_INDEX: Final = "variant-files"
_MAX_INDEX_BYTES: Final = 64 * 1024  # an index file this long is not ours: ignore it


def cache_root() -> Path:
    """shmpamt's per-user cache directory (also where compiled C variants live)."""
    explicit = os.environ.get("SHMPAMT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shmpamt"


def variant_file(spec: str) -> str | None:
    """The file part of a ``path/file.py:Class`` (or ``file.c[:prefix]``) spec, else None."""
    where, sep, _ = spec.rpartition(":")
    for path in (where, spec) if sep else (spec,):
        if path.endswith((".py", ".c")) or "/" in path:
            return path
    return None


def file_hash(path: str) -> str:
    """First 8 hex digits of the SHA-256 of a file ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:8]
    except OSError:
        return ""


def source_hash(spec: str) -> str:
    """The short source hash of a spec's variant file ("" when it is not a file)."""
    path = variant_file(spec)
    return "" if path is None else file_hash(path)


def _with_path(spec: str, path: str, new: str) -> str:
    """``spec`` with its file part ``path`` (a prefix of it) replaced by ``new``."""
    return new + spec[len(path) :]


def short_spec(spec: str) -> str:
    """How a schedule string names ``spec``: a variant file by the shorter of its path
    relative to the working directory and its absolute path; anything else as is."""
    path = variant_file(spec)
    if path is None or not os.path.isabs(path):
        return spec
    try:
        rel = os.path.relpath(path)
    except (OSError, ValueError):  # no working directory any more
        return spec
    return _with_path(spec, path, rel) if len(rel) < len(path) else spec


def _index_file(source: str) -> Path:
    return cache_root() / _INDEX / source


def recorded_paths(source: str) -> list[str]:
    """The absolute paths the index holds for a source hash, oldest first."""
    try:
        f = _index_file(source)
        if f.stat().st_size > _MAX_INDEX_BYTES:
            return []
        lines = f.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return list(dict.fromkeys(p for p in lines if os.path.isabs(p)))


def remember(spec: str) -> None:
    """Record where a spec's variant file lives, under its source hash, so schedule
    strings that name it by a relative path replay from any directory. Best effort:
    a cache that cannot be written leaves replays working from here only."""
    path = variant_file(spec)
    if path is None:
        return
    path = os.path.abspath(path)
    source = file_hash(path)
    if not source or path in recorded_paths(source):
        return
    with contextlib.suppress(OSError):
        f = _index_file(source)
        f.parent.mkdir(parents=True, exist_ok=True)
        # One short line with O_APPEND: concurrent writers never interleave within it,
        # and a path written twice is read once.
        fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (path + "\n").encode("utf-8"))
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Located:
    """Where a recorded variant name was found."""

    #: the spec to load (a variant file's path made absolute), or None: not found
    spec: str | None
    #: what the reader should know: the file came from where it was recorded, or its
    #: source differs from the recorded hash ("" when it is the file, here)
    note: str = ""


def locate(spec: str, source: str) -> Located:
    """The variant a schedule string's name stands for (see the module docstring)."""
    path = variant_file(spec)
    if path is None:
        return Located(spec)
    here = os.path.abspath(path)
    exists = os.path.isfile(here)
    if exists and (not source or file_hash(here) == source):
        return Located(_with_path(spec, path, here))
    recorded = [p for p in recorded_paths(source) if p != here] if source else []
    for p in recorded:
        if file_hash(p) == source:
            why = "has other source" if exists else "is not here"
            return Located(
                _with_path(spec, path, p),
                f"variant file {path} {why}: replaying {p}, where source {source} was recorded",
            )
    changed = [here] if exists else [p for p in recorded if os.path.isfile(p)]
    if changed:
        now = file_hash(changed[0])
        return Located(
            _with_path(spec, path, changed[0]),
            f"variant file {changed[0]} changed since this schedule was recorded "
            f"(source hash {source}, now {now}): the replay may not match",
        )
    # No hash, no file: not a file after all (a C twin such as rfc.c), the loader's call.
    return Located(None) if source else Located(spec)


def names_file(recorded: str, source: str, spec: str) -> bool:
    """Whether a schedule's variant name ``recorded`` (with its source hash) was found
    on the variant file of ``spec`` (a spec with an absolute path), whatever the file
    holds now: it names that path from here, or that path was recorded for its hash.
    A stored failure of a file belongs to it even after the file was edited."""
    path, target = variant_file(recorded), variant_file(spec)
    if path is None or target is None:
        return recorded == spec
    if recorded[len(path) :] != spec[len(target) :]:  # another class of the file
        return False
    return os.path.abspath(path) == target or bool(source and target in recorded_paths(source))


def not_found(spec: str, source: str) -> str:
    """One line for a variant file :func:`locate` could not find."""
    path = variant_file(spec) or spec
    try:
        cwd = f" ({os.getcwd()})"
    except OSError:
        cwd = ""
    recorded = recorded_paths(source) if source else []
    if recorded:
        where = f", and {', '.join(recorded)}, where source {source} was recorded, is gone"
    elif source:
        where = f" and no path of source {source} is recorded on this machine"
    else:
        where = ""
    here = "" if os.path.isabs(path) else f" in this directory{cwd}"
    return f"variant file {path} is not{here or ' there'}{where}"
