"""A TDX module daemon that dies or hangs mid-run: the run ends in bounded time with an
incident naming the daemon, judges no quiescence, and leaves no process and no IPC object.

The two variants below are loaded by the spawned CPUs from this file: one never takes
pamt_lock (so a daemon death cannot leave a lock behind and the verdict is
deterministic), one keeps pamt_lock across every SEAMCALL of a round (so a daemon
death always catches a CPU inside the lock).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import pytest

from shmpamt import tdx
from shmpamt.config import StressConfig
from shmpamt.engine.stress import StressProgress as Progress
from shmpamt.engine.stress import run_stress
from shmpamt.engine.system import System
from shmpamt.machine.cpu_board import ITERATIONS, CpuBoard
from shmpamt.machine.ipc import IpcError, parse_name, pid_alive
from shmpamt.machine.kernel import Kernel
from shmpamt.machine.seamcall import Mailbox
from shmpamt.records.results import VariantResult
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.common import tdx_alloc_pamt_pages, tdx_free_pamt_pages
from shmpamt.variants.locked import Locked

HERE = os.path.abspath(__file__)
#: what an incident about the daemon says, whichever process noticed first
DAEMON = "TDX module daemon"
ProgressHook = Callable[[Progress], None]


class OneCpuNoLock(PamtVariant):
    """Plain refcount without pamt_lock: correct with one CPU, and never holds the lock."""

    name: ClassVar[str] = "one-cpu-no-lock"
    description: ClassVar[str] = "test only: no pamt_lock, correct for a single CPU"
    source: ClassVar[str] = "tests/test_daemon_failure.py"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        if k.atomic_read(ref) == 0:
            pages: list[int] = []
            if tdx_alloc_pamt_pages(k, pages):
                return -tdx.ENOMEM
            if k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pages):
                tdx_free_pamt_pages(k, pages)
                return -tdx.EIO
        k.atomic_inc(ref)
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        if k.atomic_dec_and_test(ref):
            pages: list[int] = []
            if k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pages):
                k.atomic_inc(ref)
                return
            tdx_free_pamt_pages(k, pages)


class LockedAcrossUse(Locked):
    """``locked``, but pamt_lock is also held from the end of get to the start of put:
    every SEAMCALL of a round (ADD, AUG, RECLAIM, REMOVE) is issued inside the lock."""

    name: ClassVar[str] = "locked-across-use"
    description: ClassVar[str] = "test only: locked, lock kept while the page is in use"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        err = super().tdx_pamt_get(k, page)
        if err == 0:
            k.spin_lock()
        return err

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        k.spin_unlock()
        super().tdx_pamt_put(k, page)


def _children(prefix: str) -> list[int]:
    return [p.pid for p in mp.active_children() if p.name.startswith(prefix) and p.pid]


def _objects_of(pid: int) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if (p := parse_name(e)) is not None and p.pid == pid]


@contextmanager
def _daemon_signaller(sig: signal.Signals) -> Iterator[tuple[list[int], ProgressHook]]:
    """An on_progress hook that signals the daemon once CPUs are running; afterwards a
    stopped daemon is continued and killed whatever happened, so no test leaves one."""
    hit: list[int] = []
    seen: set[int] = set()

    def act(p: Progress) -> None:
        seen.update(_children("shmpamt-cpu"))
        if hit or p.operations < 50:
            return
        (pid,) = _children("tdx-module")
        seen.add(pid)
        os.kill(pid, sig)
        hit.append(pid)

    try:
        yield hit, act
    finally:
        for pid in hit:
            for s in (signal.SIGCONT, signal.SIGKILL):
                if pid_alive(pid):
                    os.kill(pid, s)
        # Invariant: whatever the runner did, no CPU or daemon outlives the run.
        assert [pid for pid in seen if pid_alive(pid)] == []


def _stress(variant: str, cpus: int, act: ProgressHook) -> VariantResult:
    config = StressConfig(variant, cpus=cpus, ranges=2, hold_us=20, duration=60.0, seed=11)
    return run_stress(config, act)


def _assert_ended_by_the_daemon(res: VariantResult, phrase: str) -> None:
    assert any(DAEMON in i and phrase in i for i in res.incidents), res.incidents
    # Quiescence is unknowable once the module is gone: judging it would be a false alarm.
    assert not res.quiescence_checked
    assert "quiescent_mismatch" not in res.found and "pamt_pages_lost" not in res.found, res.found
    assert _objects_of(os.getpid()) == []


@pytest.mark.timeout(120)
def test_killed_daemon_ends_the_run_with_an_incident() -> None:
    t0 = time.monotonic()
    with _daemon_signaller(signal.SIGKILL) as (hit, act):
        res = _stress("locked", 3, act)
    assert hit, "the daemon was never killed"
    # Ended on the death (CPUs see ModuleDied within one 50 ms slice), not at the 60 s duration.
    assert time.monotonic() - t0 < 30
    _assert_ended_by_the_daemon(res, "died")
    assert _children("tdx-module") == [] and _children("shmpamt-cpu") == []


@pytest.mark.timeout(150)
def test_hung_daemon_times_out_the_seamcalls_and_ends_the_run() -> None:
    """SIGSTOP: the daemon lives but never answers; SeamcallPort's 10 s timeout fires."""
    t0 = time.monotonic()
    with _daemon_signaller(signal.SIGSTOP) as (hit, act):
        res = _stress("locked", 2, act)
    assert hit, "the daemon was never stopped"
    # timeout (10 s) + CPU join grace (10 s) + daemon stop (5 s) bound it; 60 s is the duration
    assert time.monotonic() - t0 < 55
    _assert_ended_by_the_daemon(res, "did not answer")
    assert not pid_alive(hit[0])  # the runner killed the stopped daemon on its way out


@pytest.mark.timeout(120)
def test_daemon_death_inside_pamt_lock_is_no_violation() -> None:
    with _daemon_signaller(signal.SIGKILL) as (hit, act):
        res = _stress(f"{HERE}:LockedAcrossUse", 1, act)
    assert hit
    _assert_ended_by_the_daemon(res, "died")
    # Invariant: the rig's own failure is an incident, never a verdict about the variant.
    assert res.found == {}, res.found


@pytest.mark.timeout(120)
def test_daemon_death_at_a_fresh_start_is_an_incident(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon dies after every CPU paused and before the runner's RESET: the run ends
    with the daemon's incident, not with ModuleDied out of run_stress."""
    reset = System.fresh_start
    killed: list[int] = []

    def die_first(s: System) -> None:
        pid = s.module.pid
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        while s.module.alive():
            time.sleep(0.01)
        reset(s)

    monkeypatch.setattr(System, "fresh_start", die_first)
    config = StressConfig("locked", cpus=2, ranges=2, duration=60.0, epoch=0.3, seed=11)
    t0 = time.monotonic()
    res = run_stress(config)
    assert killed, "no fresh start was reached"
    assert time.monotonic() - t0 < 30  # ended on the death, not at the duration
    _assert_ended_by_the_daemon(res, "died")
    # not mistaken for a CPU that would not pause
    assert not any("fresh starts stopped" in n for n in res.notes), res.notes
    assert res.found == {}, res.found


def _daemon_pid_of_run(runner: int) -> tuple[int, int]:
    """(daemon pid, operations so far) of the CLI run ``runner``, (0, 0) before it is up."""
    entries = {
        p.role: "/" + e
        for e in os.listdir("/dev/shm")
        if (p := parse_name(e)) is not None and p.pid == runner and not e.startswith("sem.")
    }
    if "seammbox" not in entries or "cpus" not in entries:
        return 0, 0
    try:
        mb = Mailbox.attach(entries["seammbox"])
        board = CpuBoard.attach(entries["cpus"], 1)
    except IpcError:
        return 0, 0  # created but not yet initialised, or already gone
    try:
        return mb.daemon_pid, board.get(0, ITERATIONS)
    finally:
        board.close()
        mb.close()


@pytest.mark.timeout(120)
def test_cli_exits_2_with_one_line_when_the_daemon_dies() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shmpamt",
            "stress",
            "--variant",
            f"{HERE}:OneCpuNoLock",
            "--cpus",
            "1",
            "--ranges",
            "2",
            "--duration",
            "60",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        daemon, ops = 0, 0
        while ops < 50:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
            daemon, ops = _daemon_pid_of_run(proc.pid)
        os.kill(daemon, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    assert len(stderr.strip().splitlines()) <= 1, stderr
    said = [line for line in stdout.splitlines() if DAEMON in line and "incident" in line]
    assert said, stdout
    assert _objects_of(proc.pid) == []
