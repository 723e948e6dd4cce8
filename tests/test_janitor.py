"""shmpamt clean: removes leftovers of dead creators only, never live, foreign or look-alikes.

Most cases run in a scratch directory laid out like /dev/shm (``clean(directory=...)``),
so a test never removes another run's objects; those that need /dev/shm itself (what
processes map, the CLI) only dry-run.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import posix_ipc
import pytest

from shmpamt.machine.ipc import HEADER, HEADER_SIZE, MAGIC, VERSION, new_token, pid_namespace
from shmpamt.machine.janitor import (
    ALIVE,
    FOREIGN_USER,
    IN_USE,
    NOT_OURS,
    OTHER_NAMESPACE,
    SEM_T_SIZE,
    boot_time,
    clean,
    names_of,
    scan,
)

SHM = "/dev/shm"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class Files:
    """Entries made directly in a /dev/shm-like directory, removed at the end."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.entries: list[str] = []

    def path(self, entry: str) -> str:
        self.entries.append(entry)
        return os.path.join(self.dir, entry)

    def full(self, entry: str) -> str:
        return os.path.join(self.dir, entry)

    def segment(self, pid: int, token: str, role: str, pidns: int | None = None) -> str:
        """A leftover segment as a run of ``pid`` leaves it: header, creator pid, namespace."""
        entry = f"shmpamt.{pid}.{token}.{role}"
        fd = os.open(self.path(entry), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, HEADER_SIZE + 64)
            ns = pid_namespace() if pidns is None else pidns
            os.pwrite(fd, HEADER.pack(MAGIC, VERSION, 1, 64, pid, ns), 0)
        finally:
            os.close(fd)
        return "/" + entry

    def semaphore(self, pid: int, token: str, role: str) -> str:
        name = f"/shmpamt.{pid}.{token}.{role}"
        if self.dir == SHM:
            self.entries.append("sem." + name[1:])
            posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600).close()
        else:  # what sem_open leaves in /dev/shm: a sem_t-sized file
            fd = os.open(self.path("sem." + name[1:]), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, SEM_T_SIZE)
            os.close(fd)
        return name

    def plain(self, entry: str, data: bytes) -> str:
        with open(self.path(entry), "wb") as f:
            f.write(data)
        return entry

    def exists(self, entry: str) -> bool:
        return os.path.lexists(os.path.join(self.dir, entry))

    def clean(self, dry_run: bool = False, force: bool = False) -> tuple[set[str], set[str]]:
        gone, kept = clean(dry_run=dry_run, directory=self.dir, force=force)
        return names_of(gone), names_of(kept)

    def reason(self, entry: str) -> str:
        (lo,) = [lo for lo in scan(self.dir) if lo.entry == entry]
        return lo.reason

    def cleanup(self) -> None:
        for e in self.entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, e))


@pytest.fixture
def files(tmp_path: Path) -> Iterator[Files]:
    f = Files(str(tmp_path))
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture
def shm_files() -> Iterator[Files]:
    f = Files(SHM)
    try:
        yield f
    finally:
        f.cleanup()


def test_removes_a_dead_runs_segments_and_semaphores(files: Files) -> None:
    dead, token = _dead_pid(), new_token()
    seg = files.segment(dead, token, "refcounts")
    sem = files.semaphore(dead, token, "seamreq0")
    planned, _ = files.clean(dry_run=True)
    assert {seg, sem} <= planned
    assert files.exists(seg[1:])  # dry run removed nothing
    gone, _ = files.clean()
    assert {seg, sem} <= gone
    assert not files.exists(seg[1:]) and not files.exists("sem." + sem[1:])


def test_keeps_a_live_creators_objects(files: Files) -> None:
    token = new_token()
    seg = files.segment(os.getpid(), token, "live")
    sem = files.semaphore(os.getpid(), token, "livesem")
    gone, _ = files.clean(force=True)
    assert not {seg, sem} & gone
    assert files.reason(seg[1:]) == ALIVE and files.reason("sem." + sem[1:]) == ALIVE


def test_a_headerless_file_named_like_ours_is_not_ours(files: Files) -> None:
    """shmpamt.999999.deadbeef.data, not made by shmpamt: kept, even when root owns both."""
    entry = files.plain(f"shmpamt.{_dead_pid()}.deadbeef.data", b"\0" * 4096)
    gone, _ = files.clean(force=True)
    assert "/" + entry not in gone and files.exists(entry)
    assert files.reason(entry) == NOT_OURS


def test_a_plain_file_named_like_a_semaphore_is_not_ours(files: Files) -> None:
    entry = files.plain(f"sem.shmpamt.{_dead_pid()}.cafe.x", b"hello\n")
    assert os.path.getsize(files.full(entry)) != SEM_T_SIZE
    files.clean(force=True)
    assert files.exists(entry) and files.reason(entry) == NOT_OURS


@pytest.mark.skipif(os.geteuid() != 0, reason="lchown to another uid needs root")
def test_another_users_symlink_is_never_followed(files: Files) -> None:
    dead = _dead_pid()
    target = files.segment(dead, new_token(), "target")
    link = f"shmpamt.{dead}.{new_token()}.link"
    os.symlink(files.full(target[1:]), files.path(link))
    os.lchown(files.full(link), 12345, 12345)
    own_link = f"shmpamt.{dead}.{new_token()}.ownlink"
    os.symlink(files.full(target[1:]), files.path(own_link))
    gone, _ = files.clean(force=True)
    # Invariant: a symlink is never ours, whoever owns it and whatever it points to.
    assert files.exists(link) and files.exists(own_link)
    assert files.reason(link) == NOT_OURS and files.reason(own_link) == NOT_OURS
    assert target in gone  # the real leftover it points to is judged by itself


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_another_users_leftover_is_kept(files: Files) -> None:
    seg = files.segment(_dead_pid(), new_token(), "theirs")
    os.chown(files.full(seg[1:]), 12345, 12345)
    files.clean(force=True)
    assert files.exists(seg[1:]) and files.reason(seg[1:]) == FOREIGN_USER


def test_a_run_in_another_pid_namespace_is_kept_unless_forced(files: Files) -> None:
    """Its pid means nothing here (simulated: a pid that does not exist, a foreign namespace)."""
    dead, token = _dead_pid(), new_token()
    seg = files.segment(dead, token, "mailbox", pidns=pid_namespace() ^ 0x5A5A)
    sem = files.semaphore(dead, token, "seamresp0")
    lone = files.semaphore(_dead_pid(), new_token(), "lonesem")
    gone, _ = files.clean()
    assert not {seg, sem, lone} & gone
    assert files.reason(seg[1:]) == OTHER_NAMESPACE
    assert files.reason("sem." + sem[1:]) == OTHER_NAMESPACE
    assert files.reason("sem." + lone[1:]) == OTHER_NAMESPACE
    gone, _ = files.clean(force=True)
    assert {seg, sem, lone} <= gone


def test_objects_older_than_the_boot_are_removed(files: Files) -> None:
    booted = boot_time()
    assert 0 < booted < time.time()
    seg = files.segment(_dead_pid(), new_token(), "old", pidns=pid_namespace() ^ 1)
    os.utime(files.full(seg[1:]), (booted - 60, booted - 60))
    gone, _ = files.clean()
    assert seg in gone


def test_an_object_a_process_still_maps_is_kept(shm_files: Files) -> None:
    files = shm_files
    seg = files.segment(_dead_pid(), new_token(), "mapped")
    fd = os.open(files.full(seg[1:]), os.O_RDWR)
    try:
        mm = mmap.mmap(fd, HEADER_SIZE + 64)
    finally:
        os.close(fd)
    try:
        planned, _ = files.clean(dry_run=True, force=True)
        assert seg not in planned and files.reason(seg[1:]) == IN_USE
    finally:
        mm.close()
    planned, _ = files.clean(dry_run=True)
    assert seg in planned


def test_cli_clean_dry_run_lists(shm_files: Files) -> None:
    files = shm_files
    dead, token = _dead_pid(), new_token()
    files.segment(dead, token, "stale")
    name = files.semaphore(dead, token, "stalesem")
    r = subprocess.run(
        [sys.executable, "-m", "shmpamt", "clean", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert f"would remove sem {name}" in r.stdout
    assert files.exists("sem." + name[1:])


@pytest.mark.parametrize("bad", ["/dev/shm"])
def test_scan_ignores_unparseable(bad: str) -> None:
    assert all(lo.name.startswith("/shmpamt.") for lo in scan(bad))
