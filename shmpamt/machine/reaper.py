"""The reaper: a tiny process that removes this process's IPC objects however it ends.

It lives in its own session (a kill of our process group does not reach it),
reads the names we send it, one a line, and unlinks each once our end of its
pipe closes, i.e. when this process ends. After a normal exit the names are
gone already (``atexit``); after a SIGKILL, also of the whole process group
(which may take the daemon, the run's other guardian, with it), nobody else
would remove them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable

_lock = threading.Lock()

#: what the reaper runs (``python -I -S``: no site, starts in milliseconds): collect the
#: names its creator sends, one a line, and unlink each at EOF. Its creator's atexit has
#: unlinked them already after a normal exit; after any other end nobody else may.
_REAPER_SOURCE = r"""
import os, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
chunks = []
while chunk := os.read(0, 65536):
    chunks.append(chunk)
for n in set(b"".join(chunks).split(b"\n")):
    if n.startswith(b"shmpamt.") and b"/" not in n:
        for path in (b"/dev/shm/" + n, b"/dev/shm/sem." + n):
            try:
                os.unlink(path)
            except OSError:
                pass
"""

#: (pid it serves, its pid, our end of its stdin); None until this process creates a name
_reaper: tuple[int, int, int] | None = None


def _start_reaper(known: list[str]) -> tuple[int, int, int] | None:
    """A reaper for this process, told every name it owns so far; None if none can start."""
    r, w = os.pipe()
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", "-c", _REAPER_SOURCE],
            os.environ,
            # stdout and stderr not ours: nobody reading our output waits for it to go
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
            setsid=True,  # its own session: a kill of our process group does not reach it
        )
    except OSError:
        os.close(w)
        return None
    finally:
        os.close(r)
    try:
        for name in known:
            _tell(w, name)
    except OSError:
        os.close(w)
        return None
    return os.getpid(), pid, w


def pid() -> int:
    """This process's reaper's pid, 0 if it has none (it is a child, not a stray)."""
    r = _reaper
    return r[1] if r is not None and r[0] == os.getpid() else 0


def _tell(fd: int, name: str) -> None:
    data = os.fsencode(name.lstrip("/")) + b"\n"
    # Invariant: a line is shorter than PIPE_BUF, so it arrives whole or not at all.
    assert len(data) < 512
    os.write(fd, data)


def announce(name: str, known: Callable[[], list[str]]) -> None:
    """Tell the reaper about ``name`` before it exists; ``known`` lists every name this
    process owns, for a reaper that has to start (again) first."""
    global _reaper
    with _lock:
        for _ in range(2):
            reaper = _reaper
            if reaper is None or reaper[0] != os.getpid():
                reaper = _reaper = _start_reaper(known())
            if reaper is None:
                return  # no reaper: the daemon's guardian and `shmpamt clean` remain
            try:
                _tell(reaper[2], name)
                return
            except OSError:  # it died (killed by hand?): start another, tell it everything
                _drop_reaper()


def _drop_reaper(reap: bool = True) -> None:
    """Close our end of the reaper's pipe; ``reap``: also collect it if it has exited."""
    global _reaper
    if _reaper is not None:
        with contextlib.suppress(OSError):
            os.close(_reaper[2])
        if reap:
            with contextlib.suppress(OSError):
                os.waitpid(_reaper[1], os.WNOHANG)
    _reaper = None


def _forget_inherited_reaper() -> None:
    """A forked child must not keep its parent's reaper waiting (nor feed it); the
    reaper is its parent's child, not its own, so there is nothing to collect."""
    _drop_reaper(reap=False)


os.register_at_fork(after_in_child=_forget_inherited_reaper)
