"""The TDX module daemon: a separate process that answers SEAMCALLs and guards the run's IPC names.

One serving thread per mailbox blocks on that CPU's request semaphore, so a
round trip is a bare semaphore ping-pong plus the handling. A PAMT SEAMCALL
takes the TDX module's PAMT entry try-locks (``module.state.PamtLocks``) as
its handler does; a lock another call holds is TDX_OPERAND_BUSY at once. With
two-step calls (``REQ_BEGIN`` then ``REQ_END``, the default) the locks stay
held between the CPU's two requests, so calls of different CPUs overlap and
contention is real; a one-step request takes and drops them in one go. The
state change itself runs under the range's ``threading.Lock`` (a short
mutex between the daemon's threads, never a wait the module would make), and
violations are logged under it, so the log's timestamps follow the order of
the state changes.

The daemon is also the run's guardian: if its parent dies (a SIGKILLed runner
cannot clean up), it unlinks every name it knows and exits, so nothing is left
in /dev/shm.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import threading
import time
import traceback
from types import TracebackType
from typing import Final

import posix_ipc

from shmpamt import tdx
from shmpamt.errors import ModuleFailure
from shmpamt.machine.children import ignore_sigint, sigint_held
from shmpamt.machine.ipc import (
    create_semaphore,
    make_name,
    open_semaphore,
    parent_gone,
    remove_semaphore,
    unlink_name,
)
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import (
    REFUSED,
    REQ_BEGIN,
    REQ_END,
    REQ_INJECT_BUSY,
    REQUEST,
    RESPONSE,
    Mailbox,
    ModuleNames,
    SeamcallPort,
    posted,
    two_phase_default,
    withdrawn,
)
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.faults import INJECTED_BUSY, INJECTED_KINDS, NO_FAULT, Decision, FaultPlan
from shmpamt.module.state import (
    Held,
    ModuleState,
    ModuleStatistics,
    Outcome,
    PamtLocks,
    begin_seamcall,
    end_seamcall,
    note_injected_busy,
    target_range,
)

GUARD_PERIOD: Final = 0.1  # seconds between checks that the parent still lives
_READY_SLICE: Final = 0.05
_STATE_CHANGING: Final = frozenset(
    {
        tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE,
        tdx.TDH_MEM_PAGE_AUG,
        tdx.TDH_PHYMEM_PAGE_RECLAIM,
    }
)
# What ``handle`` returns instead of registers when there is nothing to answer.
_WITHDRAWN: Final = (-1, 0, 0, 0, 0)  # its caller gave up before the daemon claimed it
_NOT_POSTED: Final = (-2, 0, 0, 0, 0)  # a surplus post raced a caller still writing it
_FORCED_BUSY: Final = Decision(busy=True)
_NO_LOCK: Final = contextlib.nullcontext()  # a call on no range (reusable: it holds nothing)


class ModuleStartError(ModuleFailure):
    """The daemon did not come up (it failed, or did not signal readiness in time)."""


# --- the daemon process ---------------------------------------------------------------


class _Server:
    """Everything the daemon process holds; one instance per daemon."""

    def __init__(
        self, names: ModuleNames, pool_name: str, log_name: str, faults: FaultPlan
    ) -> None:
        self.names = names
        self.faults = faults
        self.mailbox = Mailbox.attach(names.mailbox)
        self.log = ViolationLog.attach(log_name)
        self.pool = PamtPagePool.attach(pool_name, self.log)
        self.state = ModuleState.attach(names.state)
        self.requests = [open_semaphore(n) for n in names.requests]
        self.responses = [open_semaphore(n) for n in names.responses]
        self.locks = [threading.Lock() for _ in range(self.state.nranges)]
        self.entries = PamtLocks()
        #: per mailbox: the call between its begin and end requests
        self.held: list[Held | None] = [None] * len(self.requests)
        self.epoch = self.state.epoch
        self.stopped = threading.Event()

    def serve(self, slot: int, last: int) -> None:
        """Answer the SEAMCALLs of mailbox ``slot`` until told to stop.

        ``last`` is the sequence number already in the slot, read before the
        daemon signalled readiness (reading it here could race a first call).

        The loop is the hot path of every SEAMCALL: locals only, and a NOP is
        answered without a method call so the benchmark sees the transport.
        """
        mailbox = self.mailbox
        buf = mailbox.buf
        req_off = Mailbox.request_offset(slot)
        resp_off = Mailbox.response_offset(slot)
        acquire = self.requests[slot].acquire
        release = self.responses[slot].release
        rng = self.faults.module_rng(slot)
        unpack = REQUEST.unpack_from
        pack = RESPONSE.pack_into
        claim = mailbox.claim
        count_nop = self.state.count_call
        handle = self.handle
        nop = tdx.SHMPAMT_NOP
        while True:
            acquire()
            seq, leaf, rcx, rdx, r8, rflags = unpack(buf, req_off)
            if seq == last:
                # No new request behind this post: the runner's stop signal.
                if mailbox.stopping:
                    break
                continue
            if leaf == nop:
                ticket = claim(slot, seq)
                if ticket == posted(seq):
                    count_nop(nop)
                    pack(buf, resp_off, seq, 0, 0, 0, 0, 0)
                    release()
                    last = seq
                elif ticket == withdrawn(seq):
                    last = seq  # its caller gave up: no answer, nobody listens
                # else: a surplus post raced a caller still writing its request
                continue
            try:
                out = handle(slot, seq, rng, leaf, rcx, rdx, r8, rflags)
            except Exception as e:  # an emulator bug: answer, say what, keep serving
                mailbox.set_message(f"internal error in {tdx.leaf_name(leaf)}: {e!r}")
                traceback.print_exc()
                out = (tdx.TDX_SW_ERROR, 0, 0, 0, 0)
            if out is _NOT_POSTED:
                continue
            last = seq
            if out is _WITHDRAWN:
                continue
            pack(buf, resp_off, seq, *out)
            release()
        self.stopped.set()

    def _claim(self, slot: int, seq: int, leaf: int) -> tuple[int, int, int, int, int] | None:
        """Take request ``seq`` right before acting on it; None = act, else what to answer."""
        ticket = self.mailbox.claim(slot, seq)
        if ticket != posted(seq):
            return _WITHDRAWN if ticket == withdrawn(seq) else _NOT_POSTED
        # Invariant: once a caller abandoned a call, no state-changing call executes
        # (its caller's protocol stopped midway; any later transition is a false alarm).
        if leaf in _STATE_CHANGING and self.mailbox.abandoned_by >= 0:
            return (tdx.TDX_SW_ERROR, 0, 0, 0, REFUSED)
        return None

    def handle(
        self,
        cpu: int,
        seq: int,
        rng: random.Random,
        leaf: int,
        rcx: int,
        rdx: int,
        r8: int,
        rflags: int = 0,
    ) -> tuple[int, int, int, int, int]:
        """One call; returns what to answer, or _WITHDRAWN / _NOT_POSTED (answer nothing)."""
        state = self.state
        if rflags & REQ_END:
            return self._end(cpu, seq, leaf)
        if rflags & REQ_INJECT_BUSY and leaf in _STATE_CHANGING:
            # the caller's scheduler chose this fault: no draw, the plan is not consulted
            d = _FORCED_BUSY
        elif not self.faults.leaves:  # nothing planned: the call as it is
            return self._apply(cpu, seq, leaf, rcx, rdx, r8, NO_FAULT, rflags)
        else:
            d = self.faults.decide(rng, leaf)
        if d.busy:
            r = target_range(state, leaf, rcx)
            with self.locks[r] if r is not None else _NO_LOCK:
                refused = self._claim(cpu, seq, leaf)
                if refused is not None:
                    return refused
                note_injected_busy(state, leaf, rcx)
            state.count_call(leaf)
            state.count_injected("busy")
            return tdx.TDX_OPERAND_BUSY, 0, 0, 0, d.flags
        if d.delay_before:
            time.sleep(d.delay_before)
        return self._apply(cpu, seq, leaf, rcx, rdx, r8, d, rflags)

    def _finish(self, cpu: int, leaf: int, held: Held) -> Outcome:
        """The end step of ``held``: state checks and change under the range mutex."""
        state = self.state
        r = target_range(state, leaf, held.rcx)
        with self.locks[r] if r is not None else _NO_LOCK:
            out = end_seamcall(state, self.entries, self.pool, cpu, held)
            for f in out.findings:
                self.log.record(f.name, cpu=cpu, range_=f.range, leaf=leaf, a=f.a, b=f.b)
        return out

    def _end(self, cpu: int, seq: int, leaf: int) -> tuple[int, int, int, int, int]:
        """REQ_END: finish the call this mailbox began; counted as one call, here."""
        refused = self._claim(cpu, seq, leaf)
        if refused is not None:
            return refused
        held = self.held[cpu]
        self.held[cpu] = None
        # Invariant: an end request follows its own call's begin that took the locks.
        if held is None or held.leaf != leaf:
            raise RuntimeError(f"cpu {cpu}: end of {tdx.leaf_name(leaf)} without its begin")
        out = self._finish(cpu, leaf, held)
        self.state.count_call(leaf)
        return out.status, out.rcx, out.rdx, out.r8, 0

    def _apply(
        self,
        cpu: int,
        seq: int,
        leaf: int,
        rcx: int,
        rdx: int,
        r8: int,
        d: Decision,
        rflags: int = 0,
    ) -> tuple[int, int, int, int, int]:
        """Claim and run (or, with REQ_BEGIN, begin) a call not refused as injected BUSY."""
        state = self.state
        flags = d.flags
        if leaf == tdx.SHMPAMT_RESET:
            with contextlib.ExitStack() as stack:
                for lk in self.locks:
                    stack.enter_context(lk)
                refused = self._claim(cpu, seq, leaf)
                if refused is not None:
                    return refused
                out = self._finish(cpu, leaf, Held(leaf, rcx, rdx, r8))
        else:
            refused = self._claim(cpu, seq, leaf)
            if refused is not None:
                return refused
            if state.epoch != self.epoch:
                # A reset cut off calls between their steps (explore ends executions
                # early): their locks go with the state they guarded.
                self.epoch = state.epoch
                self.entries.clear()
                self.held = [None] * len(self.held)
            stale = self.held[cpu]
            if stale is not None:  # a CPU stopped between its steps: its call ends unfinished
                self.held[cpu] = None
                stale.release(self.entries)
            got = begin_seamcall(state, self.entries, self.pool, leaf, rcx, rdx, r8)
            if isinstance(got, Outcome):
                out = got  # refused at begin: contention BUSY or an operand error
            elif rflags & REQ_BEGIN and leaf in _STATE_CHANGING:
                self.held[cpu] = got
                return tdx.SHMPAMT_LOCKS_HELD, 0, 0, 0, flags
            else:
                out = self._finish(cpu, leaf, got)
        # Counted once executed, so statistics never include withdrawn calls.
        state.count_call(leaf)
        if d is NO_FAULT:  # the common case: nothing injected, nothing to wait for
            return out.status, out.rcx, out.rdx, out.r8, 0
        for bit, kind in INJECTED_KINDS.items():
            if flags & bit and bit != INJECTED_BUSY:
                state.count_injected(kind)
        if d.delay_after:
            time.sleep(d.delay_after)
        return out.status, out.rcx, out.rdx, out.r8, flags

    def close(self) -> None:
        for s in (*self.requests, *self.responses):
            with contextlib.suppress(posix_ipc.ExistentialError):
                s.close()
        self.state.close()
        self.pool.close()
        self.log.close()
        self.mailbox.close()


def _guardian_cleanup(names: ModuleNames, extra_names: tuple[str, ...]) -> None:
    for n in (*names.all_names(), *extra_names):
        unlink_name(n)


def daemon_main(
    names: ModuleNames,
    pool_name: str,
    log_name: str,
    faults: FaultPlan,
    extra_names: tuple[str, ...],
    parent: int,
) -> None:
    """Entry point of the daemon process (spawned)."""
    # Ctrl-C reaches the whole process group; the runner decides when the module stops.
    ignore_sigint()
    try:
        server = _Server(names, pool_name, log_name, faults)
    except Exception as e:
        with contextlib.suppress(Exception):
            mb = Mailbox.attach(names.mailbox)
            mb.set_message(f"startup failed: {type(e).__name__}: {e}")
            mb.close()
        if parent_gone(parent):
            _guardian_cleanup(names, extra_names)
        os._exit(1)
    threads = [
        threading.Thread(
            target=server.serve,
            args=(i, REQUEST.unpack_from(server.mailbox.buf, Mailbox.request_offset(i))[0]),
            name=f"mailbox-{i}",
            daemon=True,
        )
        for i in range(names.ncpus + 1)
    ]
    for t in threads:
        t.start()
    server.mailbox.set_daemon_pid(os.getpid())
    # Ready: the first post of the control port's response semaphore.
    server.responses[names.control].release()
    while not server.stopped.wait(GUARD_PERIOD):
        if parent_gone(parent):
            # Guardian duty: the runner cannot clean up any more, so the module does.
            _guardian_cleanup(names, extra_names)
            os._exit(0)
    for t in threads:
        t.join(1.0)
    server.close()
    os._exit(0)


# --- the parent's handle ------------------------------------------------------------------


class TdxModule:
    """A running TDX module daemon; creates every IPC object it needs and removes them on close."""

    def __init__(self, names: ModuleNames, mailbox: Mailbox, state: ModuleState) -> None:
        self.names = names
        self.state = state
        self._mailbox = mailbox
        self._sems: list[posix_ipc.Semaphore] = []
        self._proc: mp.process.BaseProcess | None = None
        self._control: SeamcallPort | None = None
        self._closed = False
        self._pid = 0

    @classmethod
    def start(
        cls,
        ncpus: int,
        nranges: int,
        pages_per_range: int,
        pool: PamtPagePool,
        log: ViolationLog,
        faults: FaultPlan,
        token: str,
        ready_timeout: float = 30.0,
        extra_names: tuple[str, ...] = (),
        two_phase: bool | None = None,
    ) -> TdxModule:
        """Create the IPC objects, spawn the daemon and wait until it serves.

        ``two_phase``: CPUs make PAMT SEAMCALLs two steps (None: the environment's
        ``SHMPAMT_SEAMCALL_STEPS``, two unless it says 1)."""
        if ncpus < 1:
            raise ValueError("ncpus must be at least 1")
        names = ModuleNames(
            token=token,
            ncpus=ncpus,
            nranges=nranges,
            pages_per_range=pages_per_range,
            mailbox=make_name("seammbox", token),
            state=make_name("modstate", token),
            requests=tuple(make_name(f"seamreq{i}", token) for i in range(ncpus + 1)),
            responses=tuple(make_name(f"seamresp{i}", token) for i in range(ncpus + 1)),
            two_phase=two_phase_default() if two_phase is None else two_phase,
        )
        state = ModuleState.create(nranges, pages_per_range, token)
        try:
            mailbox = Mailbox.create(names.mailbox, ncpus + 1)
        except BaseException:
            state.close()
            raise
        m = cls(names, mailbox, state)
        try:
            for n in (*names.requests, *names.responses):
                m._sems.append(create_semaphore(n, 0))
            ctx = mp.get_context("spawn")
            proc = ctx.Process(
                target=daemon_main,
                args=(names, pool.name, log.name, faults, tuple(extra_names), os.getpid()),
                name=f"tdx-module-{token}",
                daemon=True,
            )
            with sigint_held():
                proc.start()
            m._proc = proc
            m._pid = proc.pid or 0
            m._wait_ready(ready_timeout)
            m._control = SeamcallPort.attach(names, names.control)
        except BaseException:
            m.close()
            raise
        return m

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        ready = self._sems[len(self.names.requests) + self.names.control]
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready.acquire(_READY_SLICE)
                return
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass  # SignalError: the runner's Ctrl-C/SIGTERM flag was set; it acts later
            if not self._proc.is_alive():
                why = self._mailbox.message or f"exit code {self._proc.exitcode}"
                raise ModuleStartError(f"the TDX module daemon failed to start: {why}")
            if time.monotonic() >= deadline:
                raise ModuleStartError(f"the TDX module daemon was not ready within {timeout:g} s")

    # -- inspection ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def statistics(self) -> ModuleStatistics:
        return self.state.statistics()

    @property
    def message(self) -> str:
        """The daemon's last internal-error message ('' if none)."""
        return self._mailbox.message

    def call(self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> tuple[int, int, int, int]:
        """A SEAMCALL through the runner's control port."""
        if self._control is None:
            raise RuntimeError("the TDX module is not running")
        return self._control.call(leaf, rcx, rdx, r8)

    def reset(self, idle: bool = False) -> None:
        """SHMPAMT_RESET: every PAMT absent, nothing assigned (pool and log are the runner's).

        ``idle``: the caller knows no SEAMCALL is in flight or can start (explore,
        between executions), so it writes the shared state itself, as the daemon
        would under every range lock, and saves a round trip per execution.
        """
        if idle:
            self.state.reset()
            return
        status = self.call(tdx.SHMPAMT_RESET)[0]
        if status != tdx.TDX_SUCCESS:
            raise ModuleFailure(f"module reset failed: {tdx.status_name(status)}")

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the daemon to exit; SIGKILL it if it does not within ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.is_alive():
            self._mailbox.set_stopping()
            for s in self._sems[: len(self.names.requests)]:
                s.release()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)
        else:
            proc.join(0)
        with contextlib.suppress(ValueError):
            proc.close()
        self._proc = None

    def close(self) -> None:
        """Stop the daemon and remove every IPC object created for it (also after a SIGKILL)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            if self._control is not None:
                self._control.close()
                self._control = None
            for s in self._sems:
                remove_semaphore(s, owner=True)
            self._sems.clear()
            self.state.close()
            self._mailbox.close()

    def __enter__(self) -> TdxModule:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
