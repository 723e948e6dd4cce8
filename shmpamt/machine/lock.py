"""``pamt_lock``: the one global lock of the PAMT helpers, as a POSIX named semaphore.

A kernel spinlock has no owner field, but a torture rig needs one: a CPU that
dies while holding the lock would otherwise hang every other CPU silently.
The owner word lives in a small shared-memory segment next to the semaphore
and is claimed with a compare-and-exchange, so two holders at once would be
caught, not just assumed impossible.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt.errors import IpcError, LockError
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import (
    create_semaphore,
    make_name,
    new_token,
    open_semaphore,
    pid_alive,
    remove_semaphore,
)

OWNER_PID: Final = 0
OWNER_CPU: Final = 1
ACQUIRES: Final = 2
CONTENDED: Final = 3
_WORDS: Final = 4
POLL: Final = 0.05  # seconds between liveness checks while waiting


class LockTimeout(LockError):
    """The lock was not acquired within the caller's timeout."""


class LockHolderDied(LockError):
    """The holder of pamt_lock exited without releasing it."""

    def __init__(self, pid: int, cpu: int) -> None:
        super().__init__(f"pamt_lock holder (cpu {cpu}, pid {pid}) died holding the lock")
        self.pid = pid
        self.cpu = cpu


class LockCorrupted(LockError):
    """Mutual exclusion broke: owner word inconsistent with the semaphore."""


@dataclass(frozen=True)
class LockStatistics:
    held: bool
    owner_pid: int
    owner_cpu: int
    acquires: int
    contended: int


class PamtLock:
    """Cross-process mutex with owner tracking and dead-holder detection."""

    def __init__(
        self, sem: posix_ipc.Semaphore, owner: RefcountArray, creator: bool, cpu: int = -1
    ) -> None:
        self._sem = sem
        self._owner = owner
        self._creator = creator
        self.cpu = cpu
        self._pid = os.getpid()
        self.sem_name: str = sem.name
        self.owner_name: str = owner.name

    @classmethod
    def create(cls, token: str | None = None) -> PamtLock:
        token = token or new_token()
        owner = RefcountArray.create(_WORDS, make_name("lockowner", token))
        try:
            sem = create_semaphore(make_name("pamtlock", token), 1)
        except BaseException:
            owner.close()
            raise
        return cls(sem, owner, creator=True)

    @classmethod
    def attach(cls, sem_name: str, owner_name: str, cpu: int = -1) -> PamtLock:
        owner = RefcountArray.attach(owner_name, _WORDS)
        try:
            sem = open_semaphore(sem_name)
        except BaseException:
            owner.close()
            raise
        return cls(sem, owner, creator=False, cpu=cpu)

    def names(self) -> tuple[str, str]:
        return self.sem_name, self.owner_name

    # -- locking ------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock; raise LockHolderDied if the holder is dead, LockTimeout on timeout."""
        sem = self._sem
        try:
            sem.acquire(0)
        except posix_ipc.BusyError:
            self._owner.inc(CONTENDED)
            self._acquire_slow(timeout)
        self._claim()

    def _acquire_slow(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL if deadline is None else min(POLL, max(0.0, deadline - time.monotonic()))
            try:
                self._sem.acquire(wait)
                return
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass  # SignalError: a handled signal interrupted the wait; look and wait again
            pid = self._owner.read(OWNER_PID)
            if pid and not pid_alive(pid):
                raise LockHolderDied(pid, self._owner.read(OWNER_CPU))
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"pamt_lock not acquired within {timeout} s")

    def _claim(self) -> None:
        # Invariant: whoever passed the semaphore finds the owner word empty;
        # anything else means two CPUs are inside the critical section.
        seen = self._owner.cmpxchg(OWNER_PID, 0, self._pid)
        if seen != 0:
            raise LockCorrupted(f"pamt_lock acquired while owner word says pid {seen}")
        self._owner.set(OWNER_CPU, self.cpu)
        self._owner.inc(ACQUIRES)

    def release(self) -> None:
        # Invariant: only the holder releases (a kernel spin_unlock by a
        # non-holder is a bug the rig must not paper over).
        seen = self._owner.cmpxchg(OWNER_PID, self._pid, 0)
        if seen != self._pid:
            raise LockCorrupted(f"pamt_lock released by pid {self._pid}, owner word says {seen}")
        self._owner.set(OWNER_CPU, -1)
        self._sem.release()

    def __enter__(self) -> PamtLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- inspection -----------------------------------------------------------

    def holder(self) -> tuple[int, int]:
        """(pid, cpu) of the holder, or (0, -1)."""
        return self._owner.read(OWNER_PID), self._owner.read(OWNER_CPU)

    def is_held(self) -> bool:
        return self._owner.read(OWNER_PID) != 0 or self._sem.value == 0

    def held_by_me(self) -> bool:
        return self._owner.read(OWNER_PID) == self._pid

    def statistics(self) -> LockStatistics:
        pid, cpu = self.holder()
        return LockStatistics(
            held=self.is_held(),
            owner_pid=pid,
            owner_cpu=cpu,
            acquires=self._owner.read(ACQUIRES),
            contended=self._owner.read(CONTENDED),
        )

    def force_release(self) -> None:
        """Recover a lock whose holder died (runner only, after reporting it)."""
        if self._owner.read(OWNER_PID) == 0 and self._sem.value > 0:
            return
        self._owner.set(OWNER_PID, 0)
        self._owner.set(OWNER_CPU, -1)
        if self._sem.value == 0:
            self._sem.release()

    def reset(self) -> None:
        """Back to free with zeroed statistics (between explore executions)."""
        self.force_release()
        self._owner.set(ACQUIRES, 0)
        self._owner.set(CONTENDED, 0)

    def close(self) -> None:
        remove_semaphore(self._sem, self._creator)
        self._owner.close()


__all__ = [
    "IpcError",
    "LockCorrupted",
    "LockError",
    "LockHolderDied",
    "LockStatistics",
    "LockTimeout",
    "PamtLock",
]
