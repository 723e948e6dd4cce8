"""Permissions: every object a run creates is 0600 under an unguessable name, and attaching
refuses an object that another user owns, that others may open, or that is not ours."""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import posix_ipc
import pytest

from shmpamt.engine.system import System, SystemConfig
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import (
    HEADER,
    MAGIC,
    IpcError,
    Segment,
    create_semaphore,
    make_name,
    new_token,
    open_semaphore,
    parse_name,
    remove_semaphore,
)
from shmpamt.module.faults import FaultPlan

NOBODY = 65534
KIND = 0x54455354  # "TEST"


def _path(name: str, sem: bool = False) -> str:
    return "/dev/shm/" + ("sem." if sem else "") + name.lstrip("/")


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextmanager
def _segment(payload: int = 64) -> Iterator[Segment]:
    seg = Segment.create(make_name("permtest"), KIND, payload)
    try:
        yield seg
    finally:
        seg.close()


@contextmanager
def _semaphore() -> Iterator[posix_ipc.Semaphore]:
    sem = create_semaphore(make_name("permsem"), 1)
    try:
        yield sem
    finally:
        remove_semaphore(sem, owner=True)


def test_every_object_of_a_run_is_0600_even_with_a_permissive_umask() -> None:
    with (
        _umask(0),
        System.start(SystemConfig(cpus=1, ranges=1, pages_per_range=1), FaultPlan.none()) as s,
    ):
        entries = [
            e
            for e in os.listdir("/dev/shm")
            if (p := parse_name(e)) is not None and p.token == s.token
        ]
        assert any(e.startswith("sem.") for e in entries) and len(entries) >= 8, entries
        for e in entries:
            st = os.stat("/dev/shm/" + e)
            # Invariant: only the creating user may read or write any object of a run.
            assert stat.S_IMODE(st.st_mode) == 0o600, (e, oct(st.st_mode))
            assert st.st_uid == os.geteuid()


def test_names_carry_at_least_48_random_bits_never_shared() -> None:
    tokens = [new_token() for _ in range(2000)]
    assert all(len(t) * 4 >= 48 and int(t, 16) >= 0 for t in tokens)
    assert len(set(tokens)) == len(tokens)
    # Two runs (same process, same moment) never share a name: the token is not the pid or time.
    a, b = (
        System.start(SystemConfig(cpus=1, ranges=1, pages_per_range=1), FaultPlan.none())
        for _ in range(2)
    )
    with a, b:
        assert a.token != b.token
        assert set(a.names.all_names()).isdisjoint(b.names.all_names())
        parsed = parse_name(a.names.refcounts)
        assert parsed is not None and parsed.token == a.token and len(parsed.token) * 4 >= 48


def test_attach_refuses_a_segment_owned_by_another_user() -> None:
    with _segment() as seg:
        os.chown(_path(seg.name), NOBODY, -1)
        with pytest.raises(IpcError, match=rf"{seg.name} is owned by uid {NOBODY}"):
            Segment.attach(seg.name, KIND)


def test_open_semaphore_refuses_one_owned_by_another_user() -> None:
    with _semaphore() as sem:
        os.chown(_path(sem.name, sem=True), NOBODY, -1)
        with pytest.raises(IpcError, match=rf"owned by uid {NOBODY}"):
            open_semaphore(sem.name)


@pytest.mark.parametrize("mode", [0o666, 0o660, 0o604])
def test_attach_refuses_a_segment_others_may_open(mode: int) -> None:
    with _segment() as seg:
        os.chmod(_path(seg.name), mode)
        with pytest.raises(IpcError, match="accessible to other users"):
            Segment.attach(seg.name, KIND)


def test_open_semaphore_refuses_one_others_may_open() -> None:
    with _semaphore() as sem:
        os.chmod(_path(sem.name, sem=True), 0o666)
        with pytest.raises(IpcError, match="other users"):
            open_semaphore(sem.name)


def test_attach_accepts_the_segment_it_was_given() -> None:
    """The refusals below are about the header, not about attach refusing everything."""
    with _segment() as seg:
        other = Segment.attach(seg.name, KIND, 64)
        assert other.payload_size == 64 and not other.owner
        other.close()
        assert os.path.exists(_path(seg.name))  # a non-owner's close never unlinks


def _raw(size: int, header: tuple[int, ...] | None) -> str:
    name = make_name("foreign")
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    try:
        if header is not None:
            os.pwrite(shm.fd, HEADER.pack(*header), 0)
    finally:
        shm.close_fd()
    return name


@pytest.mark.parametrize(
    ("size", "header", "kind", "payload", "problem"),
    [
        (4096, None, KIND, None, "has no shmpamt header"),
        (16, None, KIND, None, "too small"),
        (4096, (0xDEADBEEF, 1, KIND, 64, 1, 0), KIND, None, "has no shmpamt header"),
        (4096, (MAGIC, 99, KIND, 64, 1, 0), KIND, None, "format version 99"),
        (4096, (MAGIC, 1, KIND + 1, 64, 1, 0), KIND, None, "holds kind"),
        (4096, (MAGIC, 1, KIND, 64, 1, 0), KIND, 128, "has payload 64 bytes, expected 128"),
        (4096, (MAGIC, 1, KIND, 1 << 20, 1, 0), KIND, None, "shorter than its header says"),
    ],
)
def test_attach_refuses_a_segment_that_is_not_what_it_should_be(
    size: int, header: tuple[int, ...] | None, kind: int, payload: int | None, problem: str
) -> None:
    name = _raw(size, header)
    try:
        with pytest.raises(IpcError, match=problem):
            Segment.attach(name, kind, payload)
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_a_name_that_exists_but_holds_something_else_is_refused_by_its_user() -> None:
    """A CPU told to attach refcounts at a name that holds another kind of segment."""
    with _segment(payload=4 * 16) as seg:
        with pytest.raises(IpcError, match="holds kind"):
            RefcountArray.attach(seg.name)
        # and a header in order but a payload of the wrong size
        struct.pack_into("<I", seg.mm, 12, 4 * 16 + 4)
        with pytest.raises(IpcError, match="shorter than its header says"):
            Segment.attach(seg.name, KIND, 4 * 16)
