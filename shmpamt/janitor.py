"""Find and remove IPC objects left behind by runs whose creator is gone.

Only names that parse as ours (``shmpamt.<pid>.<token>.<role>``) are ever
considered, and only when that pid no longer runs: a live run's objects and
anything not created by shmpamt are never touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import posix_ipc

from shmpamt.ipc import parse_name, pid_alive

SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class Leftover:
    entry: str  # as listed in /dev/shm
    name: str  # as given to posix_ipc
    kind: str  # "shm" | "sem"
    pid: int
    alive: bool
    uid: int


def scan(directory: str = SHM_DIR) -> list[Leftover]:
    out = []
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        parsed = parse_name(entry)
        if parsed is None:
            continue
        kind = "sem" if entry.startswith("sem.") else "shm"
        name = "/" + (entry[4:] if kind == "sem" else entry)
        try:
            uid = os.stat(os.path.join(directory, entry)).st_uid
        except FileNotFoundError:
            continue
        out.append(Leftover(entry, name, kind, parsed.pid, pid_alive(parsed.pid), uid))
    return out


def clean(dry_run: bool = False, directory: str = SHM_DIR) -> tuple[list[Leftover], list[Leftover]]:
    """Returns (removed or to remove, kept because their creator lives or is not ours)."""
    gone, kept = [], []
    me = os.geteuid()
    for lo in scan(directory):
        # Invariant: never remove a live run's object, nor another user's.
        if lo.alive or lo.uid != me:
            kept.append(lo)
            continue
        if not dry_run:
            try:
                if lo.kind == "sem":
                    posix_ipc.unlink_semaphore(lo.name)
                else:
                    posix_ipc.unlink_shared_memory(lo.name)
            except posix_ipc.ExistentialError:
                continue  # someone else removed it meanwhile
        gone.append(lo)
    return gone, kept
