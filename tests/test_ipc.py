"""IPC names: prefix, creator pid, unguessable token, per-worker suffix; cleanup."""

from __future__ import annotations

import os
import subprocess
import sys

from shmpamt.ipc import Segment, make_name, parse_name, pid_alive


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
        "from shmpamt.ipc import Segment, make_name\n"
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
