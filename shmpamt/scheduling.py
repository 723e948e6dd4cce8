"""Controlled scheduling with real processes: the CPUs run one step at a time.

In explore mode the ``Kernel`` hook parks a CPU before every primitive (atomic,
lock, page allocator, SEAMCALL) and waits for a grant; the controller in the
runner process picks exactly one CPU to run until its next point. A CPU whose
next step is ``spin_lock`` while pamt_lock is held is not runnable. The
primitives are real: shared-memory atomics, the semaphore, the daemon's
SEAMCALLs — only the interleaving is chosen.

Shared "sched board", per CPU: state, the pending op and its target, the value
of that refcount before the op, and the result/value after the previous op;
one grant semaphore per CPU and one doorbell semaphore back to the controller.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Final

import posix_ipc

from shmpamt import tdx
from shmpamt.atomic import RefcountArray
from shmpamt.ipc import (
    Segment,
    create_semaphore,
    make_name,
    open_semaphore,
    remove_semaphore,
)

if TYPE_CHECKING:
    from shmpamt.schedulers.base import Scheduler
    from shmpamt.system import System
    from shmpamt.timeline import TraceEvent

# Every op a point can carry, in a fixed order: the index is what crosses the board.
OPS: Final[tuple[str, ...]] = (
    "atomic_read", "atomic_set", "atomic_inc", "atomic_dec", "atomic_inc_return",
    "atomic_dec_return", "atomic_dec_and_test", "atomic_inc_not_zero", "atomic_add_unless",
    "atomic_inc_unless_negative", "atomic_dec_unless_positive", "atomic_dec_if_positive",
    "atomic_cmpxchg", "spin_lock", "spin_unlock", "alloc_page", "free_page",
    *(tdx.leaf_name(leaf) for leaf in (
        tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM, tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE, tdx.SHMPAMT_NOP, tdx.SHMPAMT_STATUS,
    )),
)  # fmt: skip
OP_INDEX: Final = {op: i for i, op in enumerate(OPS)}
SPIN_LOCK: Final = OP_INDEX["spin_lock"]

# per-CPU words
W_STATE: Final = 0
W_OP: Final = 1
W_TARGET: Final = 2
W_BEFORE: Final = 3
W_RESULT: Final = 4  # result of the op that just completed
W_AFTER: Final = 5  # refcount value after it
W_CMD: Final = 6  # controller -> CPU: what to do on the next grant
W_ARG: Final = 7  # execution id / workload seed for CMD_START
W_LAST_LO: Final = 8  # 64-bit result words for SEAMCALL statuses (lo, hi)
W_LAST_HI: Final = 9
W_ARG_HI: Final = 10  # high 32 bits of the workload seed
WORDS: Final = 12

# states
IDLE, PARKED, DONE, FAILED = 0, 1, 2, 3
# commands
CMD_NONE, CMD_START, CMD_GO, CMD_ABORT, CMD_EXIT = 0, 1, 2, 3, 4
KIND_SCHED: Final = 0x53434844


class Aborted(BaseException):
    """Raised inside a CPU to unwind an execution the controller abandoned."""

    def __init__(self, cmd: int) -> None:
        super().__init__(cmd)
        self.cmd = cmd  # CMD_ABORT, or CMD_EXIT when the whole session ends


@dataclass(frozen=True)
class SchedNames:
    board: str
    doorbell: str
    grants: tuple[str, ...]


class SchedBoard:
    """The controller's and the CPUs' shared view of who is parked where."""

    def __init__(
        self,
        segment: Segment,
        cpus: int,
        doorbell: posix_ipc.Semaphore,
        grants: list[posix_ipc.Semaphore],
        owner: bool,
    ) -> None:
        self.segment = segment
        self.cpus = cpus
        self.words = RefcountArray.over(segment, 0, cpus * WORDS)
        self.doorbell = doorbell
        self.grants = grants
        self._owner = owner

    @classmethod
    def create(cls, cpus: int, token: str) -> SchedBoard:
        seg = Segment.create(make_name("sched", token), KIND_SCHED, cpus * WORDS * 4)
        sems: list[posix_ipc.Semaphore] = []
        try:
            doorbell = create_semaphore(make_name("doorbell", token), 0)
            sems.append(doorbell)
            grants = []
            for c in range(cpus):
                g = create_semaphore(make_name(f"grant{c}", token), 0)
                sems.append(g)
                grants.append(g)
        except BaseException:
            for s in sems:
                remove_semaphore(s, owner=True)
            seg.close()
            raise
        return cls(seg, cpus, doorbell, grants, owner=True)

    @classmethod
    def attach(cls, names: SchedNames) -> SchedBoard:
        seg = Segment.attach(names.board, KIND_SCHED)
        cpus = seg.payload_size // (WORDS * 4)
        return cls(
            seg,
            cpus,
            open_semaphore(names.doorbell),
            [open_semaphore(g) for g in names.grants],
            owner=False,
        )

    @property
    def names(self) -> SchedNames:
        return SchedNames(self.segment.name, self.doorbell.name, tuple(g.name for g in self.grants))

    def all_names(self) -> tuple[str, ...]:
        n = self.names
        return (n.board, n.doorbell, *n.grants)

    def get(self, cpu: int, w: int) -> int:
        return self.words.read(cpu * WORDS + w)

    def set(self, cpu: int, w: int, v: int) -> None:
        self.words.set(cpu * WORDS + w, v)

    def close(self) -> None:
        for s in (self.doorbell, *self.grants):
            remove_semaphore(s, self._owner)
        self.words.close()
        self.segment.close()


class ExploreHook:
    """The CPU side of a scheduling point: report where we are, wait for a grant."""

    def __init__(self, board: SchedBoard, cpu: int, refcounts: RefcountArray) -> None:
        self._b = board
        self._cpu = cpu
        self._rc = refcounts
        self._base = cpu * WORDS
        self._w = board.words
        self._grant = board.grants[cpu]

    def before(self, op: str, target: int) -> None:
        w, base = self._w, self._base
        w.set(base + W_OP, OP_INDEX[op])
        w.set(base + W_TARGET, target)
        w.set(base + W_STATE, PARKED)
        self._b.doorbell.release()
        self._grant.acquire()
        cmd = w.read(base + W_CMD)
        if cmd != CMD_GO:
            raise Aborted(cmd)
        # Read after the grant: only this CPU runs now, so this is exactly the
        # value the primitive will see (at park time another CPU could still change it).
        w.set(base + W_BEFORE, self._rc.read(target) if op.startswith("atomic") else 0)

    def after(self, op: str, target: int, result: int, value: int) -> None:
        w, base = self._w, self._base
        w.set(base + W_AFTER, value)
        # SEAMCALL statuses are 64-bit: split across two words
        w.set(base + W_LAST_LO, result & 0xFFFFFFFF)
        w.set(base + W_LAST_HI, (result >> 32) & 0xFFFFFFFF)

    def wait_command(self) -> tuple[int, int]:
        """Idle between executions: park, then return (command, argument)."""
        self._b.doorbell.release()
        self._grant.acquire()
        w, base = self._w, self._base
        seed = (w.read(base + W_ARG) & 0xFFFFFFFF) | ((w.read(base + W_ARG_HI) & 0xFFFFFFFF) << 32)
        return w.read(base + W_CMD), seed


def workload_rng(seed: int, cpu: int) -> random.Random:
    return random.Random(f"explore:{seed}:{cpu}")


# --- the controller (runner side) ----------------------------------------------


class ExploreError(Exception):
    """The exploration machinery itself failed (a CPU died or hung, a bad schedule)."""


@dataclass
class Execution:
    steps: list[int]
    trace: list[TraceEvent]  # what the timeline draws
    violations: list[object]  # shmpamt.invariants.Violation, with the step they surfaced at
    violation_steps: list[int]
    outcome: str  # "complete" | "deadlock" | "step-limit"
    workload_seed: int

    @property
    def failed(self) -> bool:
        return bool(self.violations)


STEP_TIMEOUT: Final = 15.0  # a parked CPU that needs longer than this is dead or hung
BOOT_TIMEOUT: Final = 60.0


class Explorer:
    """Drives executions over persistent CPU processes; resets the system between them."""

    def __init__(
        self,
        system: System,
        board: SchedBoard,
        procs: list[BaseProcess],
        max_steps: int,
    ) -> None:
        self.s = system
        self.b = board
        self.procs = procs
        self.max_steps = max_steps
        self.cpus = len(procs)

    # -- plumbing -------------------------------------------------------------------

    def _wait(self, cpu: int | None, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.b.doorbell.acquire(0.2)
                return
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass  # SignalError: the runner's Ctrl-C/SIGTERM flag was set; keep going
            for c, p in enumerate(self.procs):
                if p.exitcode is not None:
                    msg = self.s.board.message(c)
                    raise ExploreError(
                        f"cpu {c} exited ({p.exitcode})" + (f": {msg}" if msg else "")
                    )
            if not self.s.module.alive():
                raise ExploreError("the TDX module daemon died")
            if time.monotonic() > deadline:
                who = "a CPU" if cpu is None else f"cpu {cpu}"
                raise ExploreError(
                    f"{who} did not reach its next scheduling point in {timeout:.0f} s"
                )

    def _grant(self, cpu: int, cmd: int, arg: int = 0) -> None:
        self.b.set(cpu, W_CMD, cmd)
        self.b.set(cpu, W_ARG, arg & 0xFFFFFFFF)
        self.b.set(cpu, W_ARG_HI, (arg >> 32) & 0xFFFFFFFF)
        self.b.grants[cpu].release()
        self._wait(cpu)

    def boot(self) -> None:
        """Every CPU process parks in its idle loop once it has attached."""
        for _ in range(self.cpus):
            self._wait(None, BOOT_TIMEOUT)

    def shutdown(self) -> None:
        for c in range(self.cpus):
            if self.procs[c].exitcode is None:
                self.b.set(c, W_CMD, CMD_EXIT)
                self.b.grants[c].release()

    def reset(self) -> None:
        s = self.s
        for r in range(len(s.refcounts)):
            s.refcounts.set(r, s.config.initial_refcount)
        s.lock.reset()
        s.pool.reset()
        status = s.module.call(tdx.SHMPAMT_RESET)[0]
        if status != tdx.TDX_SUCCESS:
            raise ExploreError(f"module reset failed: {tdx.status_name(status)}")
        s.log.reset()
        for c in range(self.cpus):
            self.b.set(c, W_STATE, IDLE)

    # -- one execution ------------------------------------------------------------

    def run(self, scheduler: Scheduler, workload_seed: int) -> Execution:
        """One execution; whatever happens, no CPU is left parked mid-execution."""
        try:
            return self._run(scheduler, workload_seed)
        except BaseException:
            self._abort_parked()
            raise

    def _abort_parked(self) -> None:
        # Invariant: between executions every CPU waits in its idle loop, so the
        # next START is answered from a clean slate (replays stay deterministic).
        for c in range(self.cpus):
            if self.procs[c].exitcode is None and self.b.get(c, W_STATE) == PARKED:
                self._grant(c, CMD_ABORT)

    def _run(self, scheduler: Scheduler, workload_seed: int) -> Execution:
        # The runner draws timelines; CPU processes import this module and skip rich.
        from shmpamt.timeline import TraceEvent

        self.reset()
        b, log = self.b, self.s.log
        for c in range(self.cpus):
            self._grant(c, CMD_START, workload_seed)
        steps: list[int] = []
        trace: list[TraceEvent] = []
        current: int | None = None
        seen = 0
        violations: list[object] = []
        vsteps: list[int] = []
        outcome = "complete"
        while True:
            parked = [c for c in range(self.cpus) if b.get(c, W_STATE) == PARKED]
            if not parked:
                break
            held = self.s.lock.is_held()
            # A CPU about to spin_lock a held lock cannot make progress: not runnable.
            runnable = [c for c in parked if not (held and b.get(c, W_OP) == SPIN_LOCK)]
            if not runnable:
                outcome = "deadlock"
                break
            if len(steps) >= self.max_steps:
                outcome = "step-limit"
                break
            c = scheduler.next_cpu(runnable, current)
            if c not in runnable:
                raise ExploreError(f"scheduler chose cpu {c}, runnable were {runnable}")
            op = OPS[b.get(c, W_OP)]
            target = b.get(c, W_TARGET)
            is_atomic = op.startswith("atomic")
            self._grant(c, CMD_GO)
            before = b.get(c, W_BEFORE) if is_atomic else None
            result = (b.get(c, W_LAST_LO) & 0xFFFFFFFF) | ((b.get(c, W_LAST_HI) & 0xFFFFFFFF) << 32)
            if result >= 1 << 63 and is_atomic:
                result -= 1 << 64
            after = b.get(c, W_AFTER) if is_atomic else None
            trace.append(TraceEvent(len(steps), c, op, target, before, after, result))
            steps.append(c)
            current = c
            if log.total() != seen:
                new = log.records()[seen:]
                seen += len(new)
                violations.extend(new)
                vsteps.extend([len(steps) - 1] * len(new))
        if outcome == "complete":
            self.s.check_quiescent()
        elif outcome == "deadlock":
            self.s.check_lock()
        self._abort_parked()
        new = log.records()[seen:]
        violations.extend(new)
        vsteps.extend([len(steps)] * len(new))
        return Execution(steps, trace, violations, vsteps, outcome, workload_seed)
