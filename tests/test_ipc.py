"""IPC names: prefix, creator pid, unguessable token, per-worker suffix; cleanup."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

import posix_ipc
import pytest

from shmpamt.machine.ipc import (
    ParentGone,
    Segment,
    acquire_watching,
    create_semaphore,
    make_name,
    parse_name,
    pid_alive,
    remove_semaphore,
)


def test_names_carry_prefix_pid_token_and_worker() -> None:
    a, b = make_name("refcounts"), make_name("refcounts")
    assert a != b
    p = parse_name(a)
    assert p is not None and p.pid == os.getpid() and p.role == "refcounts"
    assert (p.worker or "") == os.environ.get("PYTEST_XDIST_WORKER", "")
    assert len(p.token) >= 12
    assert parse_name("sem." + a.lstrip("/")) == p
    assert parse_name("/psm_1234") is None
    assert parse_name("shmpamt.notapid.x.y") is None


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)


def test_creator_unlinks_at_exit_even_without_close() -> None:
    code = (
        "from shmpamt.machine.ipc import Segment, make_name\n"
        "s = Segment.create(make_name('t'), 1, 64)\n"
        "print(s.name)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name = r.stdout.strip()
    assert not os.path.exists("/dev/shm/" + name.lstrip("/"))


def test_segment_close_twice_is_harmless() -> None:
    s = Segment.create(make_name("t"), 1, 64)
    s.close()
    s.close()


def _blocked_grandchild(sem_name: str, conn: Connection) -> None:
    """The middle process: start a child that waits on a grant only we would post."""
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_wait_for_grant, args=(sem_name, os.getpid()), daemon=False)
    child.start()
    conn.send(child.pid)
    time.sleep(3600)  # until SIGKILLed, like a runner


def _wait_for_grant(sem_name: str, parent: int) -> None:
    sem = posix_ipc.Semaphore(sem_name)
    try:
        acquire_watching(sem, parent, poll=0.1)
    except ParentGone:
        os._exit(7)
    os._exit(0)


def test_acquire_watching_returns_when_posted() -> None:
    sem = create_semaphore(make_name("grant"), 0)
    try:
        t = threading.Timer(0.3, sem.release)
        t.start()
        t0 = time.monotonic()
        acquire_watching(sem, os.getppid(), poll=0.05)
        assert 0.2 < time.monotonic() - t0 < 5
        t.join()
    finally:
        remove_semaphore(sem, owner=True)


def test_acquire_watching_raises_once_the_parent_is_gone() -> None:
    sem = create_semaphore(make_name("grant"), 0)
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with pytest.raises(ParentGone):
            acquire_watching(sem, dead.pid, poll=0.05)
    finally:
        remove_semaphore(sem, owner=True)


def test_a_sigkilled_parent_does_not_leave_its_waiting_child_behind() -> None:
    sem = create_semaphore(make_name("grant"), 0)
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    middle = ctx.Process(target=_blocked_grandchild, args=(sem.name, theirs))
    middle.start()
    child = 0
    try:
        assert ours.poll(60)
        child = ours.recv()
        time.sleep(0.3)  # the child is blocked in acquire_watching
        os.kill(middle.pid or 0, signal.SIGKILL)
        middle.join(10)
        deadline = time.monotonic() + 5
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Invariant: a child waiting for its parent's grant does not outlive the parent.
        assert not pid_alive(child)
    finally:
        if middle.is_alive():
            middle.kill()
        with contextlib.suppress(ProcessLookupError):
            if child and pid_alive(child):
                os.kill(child, signal.SIGKILL)
        remove_semaphore(sem, owner=True)
