"""A SEAMCALL its caller gave up on is never executed, and one the module took is answered.

Issue 17, item 1: a daemon stopped (SIGSTOP) past the CPUs' timeout and then
continued executed the calls the CPUs had abandoned, so a correct variant was
reported for violations. These tests script the stop/continue against the
daemon directly, so they are deterministic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from shmpamt import tdx
from shmpamt.machine.ipc import new_token
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import ModuleHung, SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import TdxModule
from shmpamt.module.faults import FaultPlan

ADD, STATUS = tdx.TDH_PHYMEM_PAMT_ADD, tdx.SHMPAMT_STATUS
RANGE0 = 0 | tdx.TDX_PS_2M


@contextlib.contextmanager
def module(faults: FaultPlan | None = None) -> Iterator[tuple[TdxModule, PamtPagePool]]:
    token = new_token()
    log = ViolationLog.create(capacity=64, token=token)
    pool = PamtPagePool.create(16, log, token)
    try:
        with TdxModule.start(2, 2, 4, pool, log, faults or FaultPlan.none(), token) as m:
            yield m, pool
    finally:
        pool.close()
        log.close()


def _wait_state(pid: int, want: bytes, timeout: float = 10.0) -> None:
    """Signals are delivered asynchronously: wait until /proc says the process is ``want``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        state = data[data.rfind(b")") + 2 : data.rfind(b")") + 3]
        if (state == b"T") == (want == b"T"):
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} did not reach state {want!r}")


def _settle(m: TdxModule) -> None:
    """Let a continued daemon drain whatever its threads still had queued."""
    for _ in range(3):
        m.call(tdx.SHMPAMT_NOP)
    time.sleep(0.3)


def _pair(pool: PamtPagePool, cpu: int) -> tuple[int, int]:
    a, b = pool.alloc(cpu), pool.alloc(cpu)
    assert a is not None and b is not None
    return a, b


def test_a_call_abandoned_during_sigstop_never_runs_after_sigcont() -> None:
    with module() as (m, pool):
        log = pool._log
        cpu0 = SeamcallPort.attach(m.names, 0, timeout=0.5)
        cpu1 = SeamcallPort.attach(m.names, 1, timeout=5.0)
        try:
            os.kill(m.pid, signal.SIGSTOP)
            _wait_state(m.pid, b"T")
            try:
                with pytest.raises(ModuleHung, match="did not answer") as e:
                    cpu0.call(ADD, RANGE0, *_pair(pool, 0))
                assert getattr(e.value, "executed", False) is False
            finally:
                os.kill(m.pid, signal.SIGCONT)
            _wait_state(m.pid, b"R")
            _settle(m)
            # Invariant: the withdrawn ADD was never executed.
            assert m.call(STATUS, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
            assert m.statistics().calls_of(ADD) == 0
            # cpu0 gave up midway through its get, so cpu1 finds the refcount at 0 and
            # ADDs: a resumed module that ran cpu0's ADD would log add_present here.
            with pytest.raises(ModuleHung, match="refused, not executed"):
                cpu1.call(ADD, RANGE0, *_pair(pool, 1))
            assert m.call(STATUS, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
            assert log.total() == 0, log.records()
        finally:
            cpu0.close()
            cpu1.close()


def _seed_with(pick: str, lo: float, hi: float, spec: str) -> int:
    """A seed whose first decision on mailbox 0 delays ADD by lo..hi seconds (``pick`` side)."""
    for seed in range(10_000):
        plan = FaultPlan.parse(spec, seed)
        d = plan.decide(plan.module_rng(0), ADD)
        if lo <= getattr(d, pick) <= hi:
            return seed
    raise AssertionError("no seed found")


def test_a_call_still_delayed_before_its_state_change_is_withdrawn() -> None:
    spec = "add.delay=1:1"
    seed = _seed_with("delay_before", 0.7, 1.0, spec)
    with module(FaultPlan.parse(spec, seed)) as (m, pool):
        with (
            SeamcallPort.attach(m.names, 0, timeout=0.3) as cpu0,
            pytest.raises(ModuleHung, match="did not answer"),
        ):
            cpu0.call(ADD, RANGE0, *_pair(pool, 0))
        time.sleep(1.2)  # past the injected delay
        _settle(m)
        assert m.call(STATUS, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
        assert m.statistics().calls_of(ADD) == 0
        assert pool._log.total() == 0


def test_a_call_the_module_took_is_answered_not_abandoned() -> None:
    """Executed before the timeout ran out, answered after it: the caller gets the result."""
    spec = "add.delay_after=1:1"
    seed = _seed_with("delay_after", 0.45, 0.6, spec)
    with module(FaultPlan.parse(spec, seed)) as (m, pool):
        with SeamcallPort.attach(m.names, 0, timeout=0.35) as cpu0:
            assert cpu0.call(ADD, RANGE0, *_pair(pool, 0))[0] == tdx.TDX_SUCCESS
            # The module is not considered abandoned: the next call runs.
            assert cpu0.call(STATUS, 0) == (tdx.TDX_SUCCESS, 0, 1, 0)
        assert m.statistics().calls_of(ADD) == 1
