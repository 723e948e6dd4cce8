"""The runner's children: started with SIGINT held back, and every descendant owned.

Ctrl-C reaches the whole foreground process group, but only the runner decides
when its children stop, so a child must never die of it, not even while it is
still importing modules. Ignoring SIGINT in the runner while it spawns would
give children that disposition, and would also throw away a Ctrl-C meant for
the runner; blocking it instead (:func:`sigint_held`) gives children a blocked
SIGINT (exec keeps the mask) and keeps the runner's own Ctrl-C pending until
the children exist. Each child then ignores it first thing (:func:`ignore_sigint`).

A CPU runs a variant's code, and that code may fork, even into a new session.
The runner owns every such descendant: while a fleet runs it is a child
subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so an orphan of a CPU's subtree
becomes its child rather than init's, and at the end :func:`sweep` stops every
child it did not start itself and says which it found.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from multiprocessing import resource_tracker
from typing import Final

from shmpamt.machine import reaper

PR_SET_CHILD_SUBREAPER: Final = 36
PR_GET_CHILD_SUBREAPER: Final = 37
#: seconds a stray gets to disappear after SIGKILL before the sweep looks again
_REAP_WAIT: Final = 2.0
_CMDLINE_CHARS: Final = 80

_lock = threading.Lock()
_owners = 0  # fleets of this process that want to own descendants
_was_subreaper = False


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """Spawn children inside this block: SIGINT is blocked in this thread meanwhile.

    Children inherit the blocked signal, so a Ctrl-C cannot kill one before its
    entry point ignores SIGINT; a Ctrl-C this thread gets meanwhile stays
    pending and reaches the runner's handler as soon as the block ends.
    """
    # multiprocessing starts its resource tracker at the first spawn and then *unblocks*
    # SIGINT whatever the mask was: start it first, so the block below stays in force.
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_sigint() -> None:
    """A child's first act: SIGINT ignored (which also drops one that arrived during
    start-up), then unblocked, so nothing this child starts inherits a blocked mask."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


# --- descendants ----------------------------------------------------------------------


def _prctl(option: int, arg: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, arg, 0, 0, 0))


def _is_subreaper() -> bool:
    flag = ctypes.c_int(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
        return False
    return flag.value != 0


#: processes shmpamt started in this process and still watches (CPUs of every fleet):
#: never taken for strays, also not by another fleet running in another thread
_started: set[int] = set()


def started(pid: int) -> None:
    with _lock:
        _started.add(pid)


def ended(pid: int) -> None:
    with _lock:
        _started.discard(pid)


class Descendants:
    """One fleet's claim on this process's descendants, from creation to :meth:`close`.

    While it is held, orphans of this process's subtree become its children
    (where prctl allows; elsewhere the sweep still finds the strays that are
    direct children). Children that existed before it (the daemon, the reaper,
    multiprocessing's resource tracker, processes of the program that embeds the
    rig) and those of :func:`started` are the fleet's or someone else's, never strays.
    """

    def __init__(self) -> None:
        global _owners, _was_subreaper
        with _lock:
            if _owners == 0:
                _was_subreaper = _is_subreaper()
                self.adopting = _was_subreaper or _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
            else:
                self.adopting = _is_subreaper()
            _owners += 1
        self._closed = False
        self.before = children()

    def sweep(self, deadline: float = 10.0) -> list[str]:
        """Stop every stray (see :func:`sweep`); one description each."""
        with _lock:
            ours = set(_started)
        return sweep(self.before | ours | _reaper_pid(), deadline)

    def close(self) -> None:
        global _owners
        if self._closed:
            return
        self._closed = True
        with _lock:
            _owners -= 1
            if _owners == 0 and not _was_subreaper:
                _prctl(PR_SET_CHILD_SUBREAPER, 0)


def _reaper_pid() -> set[int]:
    pid = reaper.pid()
    return {pid} if pid else set()


def children(pid: int | None = None) -> set[int]:
    """The live (not zombie) child processes of ``pid`` (default: this process)."""
    return {c for c, state in _children(pid) if state not in ("Z", "X")}


def _children(pid: int | None) -> list[tuple[int, str]]:
    """(pid, state) of every child of ``pid``, zombies included (from /proc/*/stat)."""
    parent = os.getpid() if pid is None else pid
    out: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # the fields after the parenthesised command name: state, ppid, ...
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) >= 2 and int(rest[1]) == parent:
            out.append((int(entry), rest[0].decode()))
    return out


def describe(pid: int) -> str:
    """``pid`` and its command line, short, for an incident."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = ""
    if "multiprocessing.spawn" in cmd:
        return f"pid {pid} (a forked copy of a CPU process)"  # fork without exec
    if len(cmd) > _CMDLINE_CHARS:
        cmd = cmd[: _CMDLINE_CHARS - 3] + "..."
    return f"pid {pid}" + (f" ({cmd})" if cmd else "")


def sweep(known: Iterable[int], deadline: float = 10.0) -> list[str]:
    """Stop every child of this process not in ``known``: each is a stray a CPU left.

    Killing one may orphan its own children onto us, so the sweep repeats until
    none is left (or ``deadline`` seconds pass); zombies it finds are collected
    silently (they ran, but nothing of theirs is left running). Returns one
    description per process that was still running.
    """
    keep = set(known)
    found: list[str] = []
    seen: set[int] = set()
    end = time.monotonic() + deadline
    while True:
        kids = _children(None)
        live = [p for p, state in kids if p not in keep and state not in ("Z", "X")]
        for p, state in kids:
            if p not in keep and state in ("Z", "X"):
                _reap(p)
        if not live or time.monotonic() >= end:
            return found
        for p in live:
            if p not in seen:
                seen.add(p)
                found.append(describe(p))
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        gone = time.monotonic() + _REAP_WAIT
        for p in live:
            while not _reap(p) and time.monotonic() < gone:
                time.sleep(0.01)


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it has exited; True once it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child (any more) or collected already
    return done != 0
