"""shmpamt clean: removes leftovers of dead creators only, never live or foreign objects."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import posix_ipc
import pytest

from shmpamt.ipc import Segment, create_semaphore, make_name, remove_semaphore
from shmpamt.janitor import clean, scan


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_removes_only_objects_of_dead_creators() -> None:
    dead = _dead_pid()
    stale_shm = make_name("stale", pid=dead)
    stale_sem = make_name("stalesem", pid=dead)
    shm = posix_ipc.SharedMemory(stale_shm, posix_ipc.O_CREX, mode=0o600, size=64)
    shm.close_fd()
    posix_ipc.Semaphore(stale_sem, posix_ipc.O_CREX, mode=0o600).close()
    live = Segment.create(make_name("live"), 1, 64)
    foreign = "/not_shmpamt_" + os.urandom(4).hex()
    fshm = posix_ipc.SharedMemory(foreign, posix_ipc.O_CREX, mode=0o600, size=64)
    fshm.close_fd()
    try:
        planned, _ = clean(dry_run=True)
        assert {lo.name for lo in planned} >= {stale_shm, stale_sem}
        # dry run removed nothing
        assert os.path.exists("/dev/shm" + stale_shm)
        gone, kept = clean()
        names = {lo.name for lo in gone}
        assert stale_shm in names and stale_sem in names
        assert live.name not in names and live.name in {lo.name for lo in kept}
        assert not os.path.exists("/dev/shm" + stale_shm)
        assert not os.path.exists("/dev/shm/sem." + stale_sem[1:])
        assert os.path.exists("/dev/shm" + live.name)
        assert os.path.exists("/dev/shm" + foreign)
        assert all(lo.name != foreign for lo in scan())
    finally:
        live.close()
        posix_ipc.unlink_shared_memory(foreign)
        for n in (stale_shm,):
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory(n)
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(stale_sem)


def test_cli_clean_dry_run_lists(tmp_path: object) -> None:
    dead = _dead_pid()
    name = make_name("stale", pid=dead)
    sem = create_semaphore(name, 0)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "shmpamt", "clean", "--dry-run"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert f"would remove sem {name}" in r.stdout
        assert os.path.exists("/dev/shm/sem." + name[1:])
    finally:
        remove_semaphore(sem, owner=True)


@pytest.mark.parametrize("bad", ["/dev/shm"])
def test_scan_ignores_unparseable(bad: str) -> None:
    assert all(lo.name.startswith("/shmpamt.") for lo in scan(bad))
