"""pamt_lock: mutual exclusion across processes, owner tracking, dead holders, dec_and_lock."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.kernel import Kernel
from shmpamt.machine.lock import LockCorrupted, LockHolderDied, LockTimeout, PamtLock

ROUNDS = 1500


def _critical(sem_name: str, owner_name: str, counter: str, rounds: int) -> None:
    lock = PamtLock.attach(sem_name, owner_name)
    arr = RefcountArray.attach(counter)
    try:
        for _ in range(rounds):
            with lock:
                # A non-atomic read-modify-write: exact only under mutual exclusion.
                v = arr.read(0)
                arr.set(1, arr.read(1) + 1)  # inside-count, used to detect overlap
                if arr.read(1) != 1:
                    arr.inc(2)
                arr.set(0, v + 1)
                arr.set(1, arr.read(1) - 1)
    finally:
        arr.close()
        lock.close()


def test_mutual_exclusion_across_processes() -> None:
    ctx = mp.get_context("spawn")
    lock = PamtLock.create()
    arr = RefcountArray.create(3)
    try:
        procs = [
            ctx.Process(target=_critical, args=(*lock.names(), arr.name, ROUNDS)) for _ in range(3)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        # Invariant: no update lost and never two holders inside at once.
        assert arr.read(0) == 3 * ROUNDS
        assert arr.read(2) == 0
        assert lock.statistics().acquires == 3 * ROUNDS
        assert not lock.is_held()
    finally:
        arr.close()
        lock.close()


def test_owner_word_and_timeout() -> None:
    lock = PamtLock.create()
    try:
        lock.acquire()
        assert lock.holder()[0] == os.getpid() and lock.held_by_me()
        other = PamtLock.attach(*lock.names())
        try:
            t0 = time.monotonic()
            with pytest.raises(LockTimeout):
                other.acquire(timeout=0.2)
            assert time.monotonic() - t0 < 5
        finally:
            other.close()
        lock.release()
        assert not lock.is_held()
        with pytest.raises(LockCorrupted):
            lock.release()  # releasing a free lock is a bug, not a no-op
    finally:
        lock.close()


def _hold_forever(sem_name: str, owner_name: str, ready: object) -> None:
    lock = PamtLock.attach(sem_name, owner_name, cpu=7)
    lock.acquire()
    ready.set()  # type: ignore[attr-defined]
    time.sleep(600)


def test_dead_holder_is_detected_not_waited_for() -> None:
    ctx = mp.get_context("spawn")
    lock = PamtLock.create()
    try:
        ready = ctx.Event()
        p = ctx.Process(target=_hold_forever, args=(*lock.names(), ready))
        p.start()
        assert ready.wait(60)
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        with pytest.raises(LockHolderDied) as info:
            lock.acquire(timeout=30)
        assert info.value.cpu == 7 and info.value.pid == p.pid
        lock.force_release()
        lock.acquire(timeout=1)
        lock.release()
    finally:
        lock.close()


def test_atomic_dec_and_lock_semantics() -> None:
    """Kernel.atomic_dec_and_lock, the one implementation (no pool or module needed)."""
    lock = PamtLock.create()
    arr = RefcountArray.create(1)
    k = Kernel(0, arr, lock, pool=None, port=None)  # type: ignore[arg-type]

    def atomic_dec_and_lock(a: RefcountArray, i: int, lk: PamtLock) -> bool:
        assert a is arr and lk is lock
        return k.atomic_dec_and_lock(i)

    try:
        arr.set(0, 3)
        assert atomic_dec_and_lock(arr, 0, lock) is False and arr.read(0) == 2
        assert not lock.is_held()
        arr.set(0, 1)
        # Last reference: returns True with the lock held.
        assert atomic_dec_and_lock(arr, 0, lock) is True and arr.read(0) == 0
        assert lock.held_by_me()
        lock.release()
        arr.set(0, 0)
        # 0 -> -1: takes the lock, dec_and_test is false, so unlocks and returns False.
        assert atomic_dec_and_lock(arr, 0, lock) is False and arr.read(0) == -1
        assert not lock.is_held()
    finally:
        arr.close()
        lock.close()
