"""SEAMCALL transport: answers reach the right CPU, and a dead or hung module never hangs a CPU."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from shmpamt import tdx
from shmpamt.machine.ipc import new_token, parse_name, pid_alive
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import (
    REQ_INJECT_BUSY,
    Mailbox,
    ModuleDied,
    ModuleHung,
    SeamcallError,
    SeamcallPort,
)
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import ModuleNames, TdxModule
from shmpamt.module.faults import FaultPlan

NCPUS, NRANGES = 2, 2


@contextlib.contextmanager
def running_module(ncpus: int = NCPUS) -> Iterator[tuple[TdxModule, PamtPagePool]]:
    token = new_token()
    log = ViolationLog.create(capacity=64, token=token)
    pool = PamtPagePool.create(16, log, token)
    try:
        with TdxModule.start(ncpus, NRANGES, 4, pool, log, FaultPlan.none(), token) as m:
            yield m, pool
    finally:
        pool.close()
        log.close()


def _objects_of(token: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if (p := parse_name(n)) and p.token == token]


def test_registers_travel_both_ways() -> None:
    with running_module() as (m, pool), SeamcallPort.attach(m.names, 0) as port:
        a, b = pool.alloc(0), pool.alloc(0)
        assert a is not None and b is not None
        assert port.call(tdx.TDH_PHYMEM_PAMT_ADD, tdx.SZ_2M | tdx.TDX_PS_2M, a, b)[0] == 0
        assert port.call(tdx.SHMPAMT_STATUS, 1) == (tdx.TDX_SUCCESS, 0, 1, 0)
        assert port.call(tdx.TDH_PHYMEM_PAMT_REMOVE, tdx.SZ_2M | tdx.TDX_PS_2M) == (0, 0, a, b)
        assert port.daemon_pid == m.pid


def test_a_requested_busy_is_answered_without_executing_the_call() -> None:
    # A search's fault choice reaches the module as a request flag, with no fault plan.
    with running_module() as (m, pool), SeamcallPort.attach(m.names, 0) as port:
        a, b = pool.alloc(0), pool.alloc(0)
        assert a is not None and b is not None
        add = (tdx.TDH_PHYMEM_PAMT_ADD, tdx.SZ_2M | tdx.TDX_PS_2M, a, b)
        assert port.call(*add, flags=REQ_INJECT_BUSY)[0] == tdx.TDX_OPERAND_BUSY
        assert port.last_injected and port.injected_busy == 1
        assert port.call(tdx.SHMPAMT_STATUS, 1) == (tdx.TDX_SUCCESS, 0, 0, 0)
        assert port.call(*add)[0] == tdx.TDX_SUCCESS
        assert port.last_injected == 0
        assert m.statistics().injected_of("busy") == 1


def test_control_port_is_the_extra_mailbox() -> None:
    with running_module() as (m, _):
        assert m.names.control == NCPUS
        assert m.call(tdx.SHMPAMT_STATUS, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
        with pytest.raises(ValueError):
            SeamcallPort.attach(m.names, NCPUS + 1)
        with pytest.raises(ValueError):
            SeamcallPort.attach(m.names, 0, timeout=0)


def _cpu_loop(names: ModuleNames, pool_name: str, log_name: str, cpu: int, rounds: int) -> None:
    """ADD/AUG/RECLAIM/REMOVE on this CPU's own range; exit 0 only if every answer is right."""
    log = ViolationLog.attach(log_name)
    pool = PamtPagePool.attach(pool_name, log)
    port = SeamcallPort.attach(names, cpu)
    rcx = cpu * tdx.SZ_2M | tdx.TDX_PS_2M
    page = cpu * tdx.SZ_2M + cpu * tdx.PAGE_SIZE
    ok = True
    for _ in range(rounds):
        a, b = pool.alloc(cpu), pool.alloc(cpu)
        assert a is not None and b is not None
        ok &= port.call(tdx.TDH_PHYMEM_PAMT_ADD, rcx, a, b) == (0, 0, 0, 0)
        ok &= port.call(tdx.TDH_MEM_PAGE_AUG, page)[0] == 0
        ok &= port.call(tdx.SHMPAMT_STATUS, cpu) == (0, 0, 1, 1)
        ok &= port.call(tdx.TDH_PHYMEM_PAGE_RECLAIM, page)[0] == 0
        ok &= port.call(tdx.TDH_PHYMEM_PAMT_REMOVE, rcx) == (0, 0, a, b)
        pool.free(cpu, a)
        pool.free(cpu, b)
    port.close()
    pool.close()
    log.close()
    os._exit(0 if ok else 1)


def test_concurrent_cpus_each_get_their_own_answers() -> None:
    ctx = mp.get_context("spawn")
    rounds = 150
    with running_module() as (m, pool):
        log_name = pool._log.name
        procs = [
            ctx.Process(target=_cpu_loop, args=(m.names, pool.name, log_name, c, rounds))
            for c in range(NCPUS)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        # Invariant: every CPU saw exactly the registers its own calls deserved.
        assert [p.exitcode for p in procs] == [0] * NCPUS
        s = m.statistics()
        assert s.calls_of(tdx.TDH_PHYMEM_PAMT_ADD) == NCPUS * rounds
        assert s.calls_of(tdx.SHMPAMT_STATUS) == NCPUS * rounds
        assert pool.statistics().free == pool.npages and pool._log.total() == 0


def test_sigkilled_daemon_gives_module_died_and_leaves_nothing() -> None:
    with running_module() as (m, _):
        token = m.names.token
        port = SeamcallPort.attach(m.names, 1, timeout=30.0)
        try:
            assert port.call(tdx.SHMPAMT_NOP)[0] == 0
            os.kill(m.pid, signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(ModuleDied, match="died"):
                port.call(tdx.TDH_MEM_PAGE_AUG, 0)
            # Well inside the 30 s timeout: death is detected, not waited out.
            assert time.monotonic() - t0 < 5
            assert not m.alive()
            with pytest.raises(ModuleDied):  # and the port stays failed
                port.call(tdx.SHMPAMT_NOP)
        finally:
            port.close()
    assert _objects_of(token) == []


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        if data[data.rfind(b")") + 2 : data.rfind(b")") + 3] == b"T":
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} did not stop")


def test_hung_daemon_gives_module_hung_within_the_timeout() -> None:
    with running_module() as (m, _):
        port = SeamcallPort.attach(m.names, 0, timeout=0.5)
        os.kill(m.pid, signal.SIGSTOP)
        _wait_stopped(m.pid)  # SIGSTOP is delivered asynchronously
        try:
            t0 = time.monotonic()
            with pytest.raises(ModuleHung, match="did not answer"):
                port.call(tdx.SHMPAMT_NOP)
            assert time.monotonic() - t0 < 5
            assert issubclass(ModuleHung, SeamcallError) and issubclass(ModuleDied, SeamcallError)
        finally:
            os.kill(m.pid, signal.SIGCONT)
            port.close()
        assert m.alive()


def _runner(conn: Connection) -> None:
    """A runner-like parent: creates a system, reports its names, then waits to be killed."""
    token = new_token()
    log = ViolationLog.create(capacity=16, token=token)
    pool = PamtPagePool.create(4, log, token)
    m = TdxModule.start(
        1, 1, 1, pool, log, FaultPlan.none(), token, extra_names=(log.name, pool.name)
    )
    conn.send((token, m.pid))
    conn.recv()  # never arrives: the test SIGKILLs this process


def test_guardian_cleans_up_after_a_sigkilled_parent() -> None:
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    runner = ctx.Process(target=_runner, args=(theirs,))
    runner.start()
    try:
        assert ours.poll(60), "runner did not start its module"
        token, daemon = ours.recv()
        assert len(_objects_of(token)) == 2 + 2 + 2 * 2  # log, pool, mailbox, state, 4 sems
        os.kill(runner.pid or 0, signal.SIGKILL)
        runner.join(10)
        # The daemon notices within its guard period; bound the wait generously.
        deadline = time.monotonic() + 20
        while pid_alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(daemon), "daemon outlived its parent"
        assert _objects_of(token) == []
    finally:
        if runner.is_alive():
            runner.kill()
            runner.join()


def test_a_new_port_skips_the_answer_left_for_a_cpu_killed_mid_call() -> None:
    with running_module() as (m, _):
        dead = SeamcallPort.attach(m.names, 0)
        dead.call(tdx.SHMPAMT_NOP)
        # What a CPU does right before being SIGKILLed inside a SEAMCALL: post, never wait.
        mb = Mailbox.attach(m.names.mailbox)
        mb.post(0, 2, tdx.SHMPAMT_STATUS, 1, 0, 0)
        mb.close()
        dead._req.release()
        deadline = time.monotonic() + 10
        while dead._resp.value == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the module answers a CPU that no longer listens
        assert dead._resp.value == 1
        dead.close()
        with SeamcallPort.attach(m.names, 0) as heir:
            for _ in range(3):
                assert heir.call(tdx.SHMPAMT_STATUS, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
                assert heir.call(tdx.SHMPAMT_NOP, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
        assert m.statistics().calls_of(tdx.SHMPAMT_STATUS) == 4
