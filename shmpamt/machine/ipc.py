"""Named POSIX IPC objects: names, shared-memory segments, semaphores, cleanup.

Every object a run creates is named ``/shmpamt.<pid>.<token>.<role>[.<worker>]``
so that ``shmpamt clean`` can tell whose it is and whether its creator lives.
The token is random, so names cannot be guessed ahead of time; the worker
suffix keeps pytest-xdist workers apart even if pids were reused.

Every name is told to this process's reaper (:mod:`shmpamt.machine.reaper`)
before it is created, so that no kill can orphan it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import mmap
import os
import re
import secrets
import stat
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt.errors import IpcError, RunFailure
from shmpamt.machine import reaper

PREFIX = "shmpamt"
SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory and named semaphores
MODE = 0o600
MAGIC = 0x544D4150  # "PAMT" little-endian
VERSION = 1
# magic u32, version u32, kind u32, payload_size u32, creator pid u32, creator's PID
# namespace inode u32 (0 = unknown; lets `shmpamt clean` tell a dead pid from a foreign one)
HEADER = struct.Struct("<IIIIII")
HEADER_SIZE = 64  # keeps the payload 64-byte aligned (cache line)

_NAME_RE = re.compile(
    r"^/?(?:sem\.)?" + PREFIX + r"\.(?P<pid>\d+)\.(?P<token>[0-9a-f]+)\.(?P<role>[A-Za-z0-9_-]+)"
    r"(?:\.(?P<worker>[A-Za-z0-9_-]+))?$"
)


def worker_suffix() -> str:
    """Per-xdist-worker suffix (``gw0`` ...), empty outside pytest-xdist."""
    w = os.environ.get("PYTEST_XDIST_WORKER", "")
    return re.sub(r"[^A-Za-z0-9_-]", "", w)


def new_token() -> str:
    return secrets.token_hex(6)


def make_name(role: str, token: str | None = None, pid: int | None = None) -> str:
    """A fresh object name; ``token`` groups the objects of one run."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", role):
        raise ValueError(f"bad IPC role {role!r}")
    name = f"/{PREFIX}.{pid if pid is not None else os.getpid()}.{token or new_token()}.{role}"
    w = worker_suffix()
    return f"{name}.{w}" if w else name


@dataclass(frozen=True)
class ParsedName:
    pid: int
    token: str
    role: str
    worker: str | None


def parse_name(name: str) -> ParsedName | None:
    """Parse a name (as given to posix_ipc, or as listed in /dev/shm); None if not ours."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return ParsedName(int(m["pid"]), m["token"], m["role"], m["worker"])


# --- cleanup registry -------------------------------------------------------

_lock = threading.Lock()
_owned: dict[str, Callable[[], None]] = {}


def _owned_names() -> list[str]:
    with _lock:
        return list(_owned)


def _announce(name: str) -> None:
    """Tell the reaper about ``name`` before it exists, so no kill can orphan it."""
    reaper.announce(name, _owned_names)


def _register(name: str, unlink: Callable[[], None]) -> None:
    with _lock:
        _owned[name] = unlink


def _forget(name: str) -> None:
    with _lock:
        _owned.pop(name, None)


def unlink_all_owned() -> list[str]:
    """Unlink every object this process created and has not yet removed."""
    with _lock:
        items = list(_owned.items())
        _owned.clear()
    for _, unlink in items:
        with contextlib.suppress(posix_ipc.ExistentialError):
            unlink()
    return [n for n, _ in items]


atexit.register(unlink_all_owned)


def unlink_name(name: str) -> bool:
    """Remove a shm segment or semaphore by name; True if something was removed."""
    for fn in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
        try:
            fn(name)
            _forget(name)
            return True
        except posix_ipc.ExistentialError:
            continue
    return False


# --- shared-memory segments ------------------------------------------------


_FREE_SOME = "free some space there or mount a larger tmpfs"


def _no_room(name: str, what: str, e: OSError) -> str:
    """One line, the same in every process of a run (no pid or token in it)."""
    role = parse_name(name)
    of = f" ({role.role})" if role is not None else ""
    return f"no room in {SHM_DIR} for {what}{of}: {e.strerror}; " + _FREE_SOME


#: errno values that mean "/dev/shm is full" (a tmpfs out of space, or of memory)
NO_ROOM: Final = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT})


def no_room(what: str, e: OSError) -> IpcError | None:
    """The one-line error for ``what`` (an object someone else, e.g. multiprocessing,
    creates in /dev/shm) failing for lack of room; None if ``e`` is another error."""
    if e.errno not in NO_ROOM:
        return None
    return IpcError(f"no room in {SHM_DIR} for {what}: {e.strerror}; " + _FREE_SOME)


def _reserve(fd: int, name: str, size: int) -> None:
    """Give the segment its memory now: a tmpfs (``/dev/shm``) without room for it
    then fails here, with one line, instead of killing with SIGBUS whichever process
    first touches a page the filesystem cannot supply."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in NO_ROOM:
            raise IpcError(_no_room(name, f"a {size}-byte shared memory segment", e)) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise IpcError(f"cannot reserve shared memory {name}: {e.strerror}") from None
        # a filesystem without fallocate: the memory comes when first touched, as before


class Segment:
    """A named shared-memory segment with a small self-describing header.

    The header (magic, version, kind, payload size) lets ``attach`` refuse a
    segment that is not ours or not of the expected kind before any of its
    bytes are read as atomics.
    """

    def __init__(self, name: str, mm: mmap.mmap, payload_size: int, kind: int, owner: bool) -> None:
        self.name = name
        self.mm = mm
        self.payload_size = payload_size
        self.kind = kind
        self.owner = owner
        self.view = memoryview(mm)
        self.payload = self.view[HEADER_SIZE : HEADER_SIZE + payload_size]
        self._closed = False

    @classmethod
    def create(cls, name: str, kind: int, payload_size: int) -> Segment:
        if payload_size <= 0:
            raise ValueError("payload_size must be positive")
        total = HEADER_SIZE + payload_size
        _announce(name)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=MODE, size=total)
        except posix_ipc.ExistentialError as e:
            raise IpcError(f"shared memory {name} already exists") from e
        _register(name, lambda: posix_ipc.unlink_shared_memory(name))
        try:
            os.fchmod(shm.fd, MODE)  # umask cannot widen it, but be explicit
            _reserve(shm.fd, name, total)
            mm = mmap.mmap(shm.fd, total)
        except BaseException:
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(name)
            _forget(name)
            raise
        finally:
            shm.close_fd()
        HEADER.pack_into(mm, 0, MAGIC, VERSION, kind, payload_size, os.getpid(), pid_namespace())
        return cls(name, mm, payload_size, kind, owner=True)

    @classmethod
    def attach(cls, name: str, kind: int, payload_size: int | None = None) -> Segment:
        try:
            shm = posix_ipc.SharedMemory(name, 0)
        except posix_ipc.ExistentialError as e:
            raise IpcError(f"no shared memory segment named {name}") from e
        except posix_ipc.PermissionsError as e:
            raise IpcError(f"no permission to open shared memory {name}") from e
        try:
            st = os.fstat(shm.fd)
            # An object we did not create (another user) is never trusted.
            if st.st_uid != os.geteuid():
                raise IpcError(f"{name} is owned by uid {st.st_uid}, not by this user")
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise IpcError(f"{name} is accessible to other users (mode {oct(st.st_mode)})")
            if st.st_size < HEADER_SIZE:
                raise IpcError(f"{name} is too small to be a shmpamt segment")
            mm = mmap.mmap(shm.fd, st.st_size)
        finally:
            shm.close_fd()
        magic, version, got_kind, size, _pid, _ = HEADER.unpack_from(mm, 0)
        problem = None
        if magic != MAGIC:
            problem = "has no shmpamt header"
        elif version != VERSION:
            problem = f"has format version {version}, expected {VERSION}"
        elif got_kind != kind:
            problem = f"holds kind {got_kind:#x}, expected {kind:#x}"
        elif HEADER_SIZE + size > st.st_size:
            problem = "is shorter than its header says"
        elif payload_size is not None and size != payload_size:
            problem = f"has payload {size} bytes, expected {payload_size}"
        if problem:
            mm.close()
            raise IpcError(f"shared memory {name} {problem}")
        return cls(name, mm, size, kind, owner=False)

    @property
    def address(self) -> int:
        """Address of the payload in this process (for the atomics binding)."""
        import ctypes

        buf = (ctypes.c_char * 1).from_buffer(self.mm, HEADER_SIZE)
        addr = ctypes.addressof(buf)
        del buf
        return addr

    def close(self) -> None:
        """Detach; the creator also unlinks the name."""
        if self._closed:
            return
        self._closed = True
        self.payload.release()
        self.view.release()
        # A cffi/ctypes view may still point into the mapping; the OS frees it at exit.
        with contextlib.suppress(BufferError):
            self.mm.close()
        if self.owner:
            self.unlink()

    def unlink(self) -> None:
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(self.name)
        _forget(self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- semaphores -------------------------------------------------------------


def create_semaphore(name: str, value: int) -> posix_ipc.Semaphore:
    _announce(name)
    try:
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=MODE, initial_value=value)
    except posix_ipc.ExistentialError as e:
        raise IpcError(f"semaphore {name} already exists") from e
    except OSError as e:
        if e.errno in NO_ROOM:
            raise IpcError(_no_room(name, "a semaphore", e)) from None
        raise
    _register(name, lambda: posix_ipc.unlink_semaphore(name))
    return sem


def open_semaphore(name: str) -> posix_ipc.Semaphore:
    path = f"{SHM_DIR}/sem." + name.lstrip("/")
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise IpcError(f"no semaphore named {name}") from e
    if st.st_uid != os.geteuid():
        raise IpcError(f"semaphore {name} is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IpcError(f"semaphore {name} is accessible to other users (mode {oct(st.st_mode)})")
    try:
        return posix_ipc.Semaphore(name, 0)
    except posix_ipc.ExistentialError as e:
        raise IpcError(f"no semaphore named {name}") from e


def remove_semaphore(sem: posix_ipc.Semaphore, owner: bool) -> None:
    name = sem.name
    with contextlib.suppress(posix_ipc.ExistentialError):
        sem.close()
    if owner:
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(name)
        _forget(name)


def pid_namespace() -> int:
    """Inode of this process's PID namespace (fits the header's u32 on Linux), 0 if unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino & 0xFFFFFFFF
    except OSError:
        return 0


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # state is the field after the parenthesised command name
    state = data[data.rfind(b")") + 2 : data.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def parent_gone(parent_pid: int) -> bool:
    """Our parent ``parent_pid`` died: we were reparented (which counts even if the pid
    was reused meanwhile), or it no longer exists."""
    return os.getppid() != parent_pid or not pid_alive(parent_pid)


class ParentGone(RunFailure):
    """The process that was to post a semaphore we wait on is gone (e.g. a SIGKILLed runner)."""


def acquire_watching(sem: posix_ipc.Semaphore, parent_pid: int, poll: float = 0.2) -> None:
    """``sem.acquire()`` that cannot outlive ``parent_pid``: raises ParentGone instead.

    A child blocked forever on a semaphore only its parent posts becomes an
    orphan when the parent is SIGKILLed; waiting in slices of ``poll`` seconds
    and checking the parent between them bounds that to one slice. Reparenting
    (``os.getppid()`` no longer ``parent_pid``) counts as gone even if the pid
    was reused meanwhile.
    """
    while True:
        try:
            sem.acquire(poll)
            return
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            pass
        if parent_gone(parent_pid):
            raise ParentGone(f"pid {os.getpid()}: parent {parent_pid} is gone")
