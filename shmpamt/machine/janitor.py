"""Find and remove IPC objects left behind by runs whose creator is gone.

``clean`` removes an entry of /dev/shm only when all of these hold, because
what it removes cannot be brought back and may belong to a live run:

- it is ours: a regular file (never a symlink: ``lstat``/``O_NOFOLLOW``) owned
  by the caller, named exactly as ``ipc.make_name`` names things, and either a
  segment carrying the shmpamt header (magic and version) or a semaphore the
  size of a POSIX ``sem_t``;
- nothing maps it: no process we can see has it in ``/proc/<pid>/maps`` (a
  live run maps every object it made, whatever its PID namespace);
- its creator is provably gone: the pid in its name, and the creator pid in
  its header, do not run *in the PID namespace the header records*, which must
  be ours. A pid from another namespace (a run in a container sharing
  /dev/shm) cannot be judged from here, so it counts as possibly alive unless
  the object predates the last boot or ``force`` is given. A semaphore has no
  header: it is judged by the segments of its run (same pid and token).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from shmpamt.machine.ipc import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    parse_name,
    pid_alive,
    pid_namespace,
)

SHM_DIR: Final = "/dev/shm"
#: sizeof(sem_t) on 64-bit Linux (glibc and musl): what sem_open creates in /dev/shm
SEM_T_SIZE: Final = 32

# why an object is kept
ALIVE: Final = "creator is alive"
IN_USE: Final = "mapped by a running process"
FOREIGN_USER: Final = "owned by another user"
NOT_OURS: Final = "not a shmpamt object"
OTHER_NAMESPACE: Final = "creator may live in another PID namespace (use --force)"


@dataclass(frozen=True)
class Leftover:
    entry: str  # as listed in /dev/shm
    name: str  # as given to posix_ipc
    kind: str  # "shm" | "sem"
    pid: int
    alive: bool  # kept because its run may still be alive (see ``reason``)
    uid: int
    reason: str = ""  # why it is kept ('' when it is removable)
    token: str = ""


@dataclass(frozen=True)
class _Seen:
    """What one entry's lstat and header say."""

    st: os.stat_result
    ours: bool
    creator: int = 0  # header's creator pid (segments)
    pidns: int = 0  # header's PID namespace inode (segments; 0 = not recorded)


def boot_time(stat_file: str = "/proc/stat") -> float:
    """Seconds since the epoch at the last boot (``btime``), 0 if unknown."""
    with contextlib.suppress(OSError), open(stat_file) as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def mapped_paths(proc: str = "/proc") -> set[str]:
    """Every /dev/shm path some visible process maps (unreadable processes are skipped)."""
    out: set[str] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        with contextlib.suppress(OSError), open(f"{proc}/{pid}/maps", "rb") as f:
            for line in f:
                i = line.find(b" /dev/shm/")
                if i >= 0:
                    path = line[i + 1 :].rstrip(b"\n")
                    out.add(os.fsdecode(path.removesuffix(b" (deleted)")))
    return out


def _inspect(directory: str, entry: str, kind: str) -> _Seen | None:
    path = os.path.join(directory, entry)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return _Seen(st, ours=False)  # a symlink, a directory, a device: never ours
    if kind == "sem":
        return _Seen(st, ours=st.st_size == SEM_T_SIZE)
    if st.st_size < HEADER_SIZE:
        return _Seen(st, ours=False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return _Seen(st, ours=False)
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            return _Seen(st, ours=False)  # replaced between lstat and open
        head = os.pread(fd, HEADER.size, 0)
    finally:
        os.close(fd)
    if len(head) < HEADER.size:
        return _Seen(st, ours=False)
    magic, version, _kind, size, creator, pidns = HEADER.unpack(head)
    ours = magic == MAGIC and version == VERSION and HEADER_SIZE + size <= st.st_size
    return _Seen(st, ours=ours, creator=creator, pidns=pidns)


def scan(directory: str = SHM_DIR, force: bool = False, proc: str = "/proc") -> list[Leftover]:
    """Every entry named like ours, each with the reason it must be kept ('' = removable)."""
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    me = os.geteuid()
    here = pid_namespace()
    booted = boot_time()
    in_use = mapped_paths(proc) if directory == SHM_DIR else set()
    seen: list[tuple[str, str, int, str, _Seen]] = []
    for entry in entries:
        parsed = parse_name(entry)
        if parsed is None:
            continue
        kind = "sem" if entry.startswith("sem.") else "shm"
        s = _inspect(directory, entry, kind)
        if s is not None:
            seen.append((entry, kind, parsed.pid, parsed.token, s))

    def verdict(pid: int, s: _Seen) -> str:
        """For a segment of ours: '' if its creator is provably gone."""
        if pid_alive(pid) or (s.creator and pid_alive(s.creator)):
            return ALIVE
        if s.pidns == here and here:
            return ""  # our namespace: a pid we cannot see is dead
        if force or (booted and s.st.st_mtime < booted):
            return ""
        return OTHER_NAMESPACE

    # A run is judged by its segments: dead only if each of them says so.
    runs: dict[tuple[int, str], str] = {}
    for _entry, kind, pid, token, s in seen:
        if kind == "shm" and s.ours and s.st.st_uid == me:
            why = verdict(pid, s)
            key = (pid, token)
            runs[key] = runs.get(key, "") or why

    out = []
    for entry, kind, pid, token, s in seen:
        name = "/" + (entry[4:] if kind == "sem" else entry)
        if not s.ours:
            reason = NOT_OURS
        elif s.st.st_uid != me:
            reason = FOREIGN_USER
        elif os.path.join(SHM_DIR, entry) in in_use:
            reason = IN_USE
        elif kind == "shm":
            reason = runs.get((pid, token), "")
        elif (pid, token) in runs:
            reason = runs[(pid, token)]
        elif pid_alive(pid):
            reason = ALIVE
        elif force or (booted and s.st.st_mtime < booted):
            reason = ""
        else:
            reason = OTHER_NAMESPACE  # a lone semaphore: nothing says where its pid lived
        alive = reason in (ALIVE, IN_USE, OTHER_NAMESPACE)
        out.append(Leftover(entry, name, kind, pid, alive, s.st.st_uid, reason, token))
    return out


def _remove(directory: str, lo: Leftover) -> bool:
    """Unlink ``lo`` if it is still the file that was judged; False if it changed or went."""
    path = os.path.join(directory, lo.entry)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    # Invariant: only a regular file of ours is unlinked (unlink never follows a symlink).
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False  # someone else removed it meanwhile
    return True


def clean(
    dry_run: bool = False, directory: str = SHM_DIR, force: bool = False
) -> tuple[list[Leftover], list[Leftover]]:
    """Returns (removed or to remove, kept). ``force``: also objects of PIDs we cannot judge."""
    gone, kept = [], []
    for lo in scan(directory, force=force):
        # Invariant: never remove a live run's object, another user's, or one not ours.
        if lo.reason:
            kept.append(lo)
            continue
        if dry_run or _remove(directory, lo):
            gone.append(lo)
    return gone, kept


def names_of(leftovers: Iterable[Leftover]) -> set[str]:
    return {lo.name for lo in leftovers}
