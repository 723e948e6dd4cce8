"""Parking: the CPU side of controlled scheduling, and the board both sides share.

In explore mode the ``Kernel`` hook parks a CPU before every primitive (atomic,
lock, page allocator, SEAMCALL) and waits for a grant; the controller
(:mod:`shmpamt.engine.explore`) picks exactly one CPU to run until its next
point. The primitives are real: shared-memory atomics, the semaphore, the
daemon's SEAMCALLs; only the interleaving is chosen.

A grant may carry a *budget*: when the strategy has already decided that the
same CPU takes the next steps too (every other CPU is blocked, or it said so
in advance), the CPU takes them without parking, writing one record per step
into its ring, and the controller replays those decisions to the strategy
afterwards. A hand-off costs two process switches, a step in the same process
a few microseconds.

A grant may also start a *plan*: the strategy's next decisions for several
CPUs in turn (a random walk has drawn its numbers already). Each CPU of the
plan runs its segment, parks, and grants the next segment's CPU itself, so
the controller wakes once per plan instead of once per segment.

Both are promises made for the CPUs that can run at the grant, so they hold
only while exactly those can: a CPU stops short (parks, and rings the
controller) before a step that changes that. Only the lock does: taking it
while another CPU waits at ``spin_lock`` (or when it is held: this CPU is
blocked), dropping it while one waits, and parking at ``spin_lock`` of a
held lock. A CPU that finishes rings the controller too.

Shared "sched board", per CPU: state, the parked step (op, target, operands),
the command and budget of the next grant, the steps taken since, then the
ring of their records; one grant semaphore per CPU and one doorbell semaphore
back to the controller.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt import tdx
from shmpamt.atomic import RefcountArray, wrap32
from shmpamt.invariants import ViolationLog
from shmpamt.ipc import (
    Segment,
    acquire_watching,
    create_semaphore,
    make_name,
    open_semaphore,
    remove_semaphore,
)
from shmpamt.kernel import PRIMITIVES

# Every op a point can carry, in a fixed order: the index is what crosses the board.
OPS: Final[tuple[str, ...]] = (
    *PRIMITIVES,
    *(tdx.leaf_name(leaf) for leaf in (
        tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM, tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE, tdx.SHMPAMT_NOP, tdx.SHMPAMT_STATUS,
    )),
)  # fmt: skip
OP_INDEX: Final = {op: i for i, op in enumerate(OPS)}
SPIN_LOCK: Final = OP_INDEX["spin_lock"]
SPIN_UNLOCK: Final = OP_INDEX["spin_unlock"]
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1
#: ops on a refcount slot (their target is the slot)
ATOMIC_OPS: Final = frozenset(i for i, op in enumerate(OPS) if op.startswith("atomic"))

# per-CPU words
W_STATE: Final = 0
W_OP: Final = 1  # the parked step: op index, target, operands
W_TARGET: Final = 2
W_OPND_A: Final = 3  # operands of atomic_add_unless (a, u) and atomic_cmpxchg (old, new)
W_OPND_B: Final = 4
W_CMD: Final = 5  # controller -> CPU: what to do on the next grant
W_ARG: Final = 6  # workload seed for CMD_START (low, high 32 bits)
W_ARG_HI: Final = 7
W_BUDGET: Final = 8  # controller -> CPU: steps it may take after the granted one, unparked
W_RAN: Final = 9  # CPU -> controller: steps taken since the grant (their records: the ring)
WORDS: Final = 10

# The plan, one per board after the rings: which segment runs now (-1: no plan),
# how many there are, then per segment its CPU, budget and first ring slot.
P_POS: Final = 0
P_LEN: Final = 1
P_SEGMENTS: Final = 2
SEG: Final = 3

# The step ring, per CPU: one record per step taken since the last grant. The
# controller unpacks a record as one slice: the fields are numbered in order.
RING_SLOTS: Final = 64
R_OP: Final = 0
R_TARGET: Final = 1
R_OPND_A: Final = 2
R_OPND_B: Final = 3
R_BEFORE: Final = 4  # refcount value the atomic saw
R_AFTER: Final = 5  # ... and left
R_LO: Final = 6  # the 64-bit result (SEAMCALL status) as two words
R_HI: Final = 7
R_LOG: Final = 8  # violations logged up to the start of the next step (not for the last)
REC: Final = 9

# states
IDLE, PARKED, DONE, FAILED = 0, 1, 2, 3
# commands
CMD_NONE, CMD_START, CMD_GO, CMD_ABORT, CMD_EXIT = 0, 1, 2, 3, 4
KIND_SCHED: Final = 0x53434844
_PER_CPU: Final = WORDS + RING_SLOTS * REC
_PLAN_WORDS: Final = P_SEGMENTS + RING_SLOTS * SEG  # a segment takes at least one step


def _board_words(cpus: int) -> int:
    return cpus * _PER_CPU + _PLAN_WORDS


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
        # Plain 32-bit loads and stores through a typed view: the board only changes
        # hands through a semaphore post/wait pair (a full barrier), so nothing here
        # needs an atomic read-modify-write, and an indexed view costs tens of ns
        # where a call through the atomics binding costs a microsecond per word.
        self.w: memoryview = segment.payload[: _board_words(cpus) * 4].cast("i")
        self.doorbell = doorbell
        self.grants = grants
        self._owner = owner

    @classmethod
    def create(cls, cpus: int, token: str) -> SchedBoard:
        seg = Segment.create(make_name("sched", token), KIND_SCHED, _board_words(cpus) * 4)
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
        cpus = (seg.payload_size // 4 - _PLAN_WORDS) // _PER_CPU
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

    def ring(self, cpu: int) -> int:
        """Index in ``w`` of ``cpu``'s first step record."""
        return self.cpus * WORDS + cpu * RING_SLOTS * REC

    @property
    def plan(self) -> int:
        """Index in ``w`` of the plan's first word."""
        return self.cpus * _PER_CPU

    def get(self, cpu: int, w: int) -> int:
        return int(self.w[cpu * WORDS + w])

    def set(self, cpu: int, w: int, v: int) -> None:
        self.w[cpu * WORDS + w] = wrap32(v)

    def close(self) -> None:
        for s in (self.doorbell, *self.grants):
            remove_semaphore(s, self._owner)
        self.w.release()  # the segment's mapping cannot close while a view is exported
        self.segment.close()


class ExploreHook:
    """The CPU side of a scheduling point: report where we are, wait for a grant."""

    def __init__(
        self,
        board: SchedBoard,
        cpu: int,
        refcounts: RefcountArray,
        controller: int,
        log: ViolationLog,
        lock_held: Callable[[], bool],
    ) -> None:
        # Grants come only from the controller, our parent: if it dies (SIGKILL), a
        # plain wait would park this CPU forever. acquire_watching gives up instead.
        # Its pid comes with the system's names: if it died before this CPU started,
        # os.getppid() would already name whoever adopts orphans.
        self._parent = controller
        self._cpu = cpu
        # Plain loads: while this CPU runs no other process writes these words.
        self._rc = refcounts.view()
        self._nrc = len(refcounts)  # an index out of range is the primitive's to report
        self._log, self._log_total = log.total_view()
        self._base = cpu * WORDS
        self._others = [o * WORDS for o in range(board.cpus) if o != cpu]
        self._ring = board.ring(cpu)
        self._w = board.w
        self._grant = board.grants[cpu]
        self._grants = board.grants
        self._doorbell = board.doorbell
        self._plan = board.plan
        self._lock_held = lock_held
        self._budget = 0  # steps left to take without parking
        self._ran = 0  # steps taken since the last grant
        self._unlocked = False  # the last step was spin_unlock
        self._segment = -1  # the plan segment this CPU runs, or -1

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> None:
        w = self._w
        opi = OP_INDEX[op]
        ran = self._ran
        if a or b:
            a = a if _I32_MIN <= a <= _I32_MAX else wrap32(a)
            b = b if _I32_MIN <= b <= _I32_MAX else wrap32(b)
        if self._runs_on(opi):
            # Granted in advance: no hand-off. What the last step logged ends with it.
            self._budget -= 1
            r = self._ring + ran * REC
            w[r - REC + R_LOG] = self._log[self._log_total]
        else:
            base = self._base
            w[base + W_OP] = opi
            w[base + W_TARGET] = target
            w[base + W_OPND_A] = a
            w[base + W_OPND_B] = b
            w[base + W_STATE] = PARKED
            nxt = self._plan_next(opi)
            if nxt < 0:
                self._doorbell.release()
            else:
                # Our segment is done and the runnable set is as the plan assumed:
                # what our last step logged ends here, and the next CPU goes on.
                w[self._ring + (ran - 1) * REC + R_LOG] = self._log[self._log_total]
                w[self._plan + P_POS] = nxt
                self._grants[w[self._plan + P_SEGMENTS + nxt * SEG]].release()
            acquire_watching(self._grant, self._parent)
            cmd = w[base + W_CMD]
            if cmd != CMD_GO:
                self._budget = 0
                raise Aborted(cmd)
            pos = w[self._plan + P_POS]
            self._segment = pos
            if pos < 0:
                self._budget = w[base + W_BUDGET]
                ran = 0
            else:
                seg = self._plan + P_SEGMENTS + pos * SEG
                self._budget = w[seg + 1]
                ran = w[seg + 2]
            r = self._ring + ran * REC
        w[r + R_OP] = opi
        w[r + R_TARGET] = target
        w[r + R_OPND_A] = a
        w[r + R_OPND_B] = b
        # Read now: only this CPU runs, so this is exactly the value the primitive
        # will see (at park time another CPU could still have changed it).
        w[r + R_BEFORE] = self._rc[target] if opi in ATOMIC_OPS and 0 <= target < self._nrc else 0
        self._ran = ran = ran + 1
        w[self._base + W_RAN] = ran  # in a plan: the ring slots used by this and earlier segments
        self._unlocked = opi == SPIN_UNLOCK

    def _plan_next(self, opi: int) -> int:
        """The plan segment to grant after parking at ``opi``, or -1: ring the controller.

        The plan assumed the runnable set stays as it was: it ends where it may
        not. With budget left this CPU parked for the lock (``_runs_on``); parked
        at ``spin_lock`` of a held lock it is blocked; and granting ``spin_lock``
        to the next CPU while another CPU waits there would block that one.
        """
        seg = self._segment
        if seg < 0 or self._budget > 0:
            return -1
        w, plan = self._w, self._plan
        nxt = seg + 1
        if nxt >= w[plan + P_LEN] or (opi == SPIN_LOCK and self._lock_held()):
            return -1
        o = w[plan + P_SEGMENTS + nxt * SEG] * WORDS
        if w[o + W_OP] == SPIN_LOCK and (self._lock_held() or self._waiters(o)):
            return -1
        return nxt

    def _waiters(self, but: int = -1) -> bool:
        """Whether another CPU (not the one whose words start at ``but``) is parked at
        ``spin_lock``: taking or dropping the lock changes whether it can run."""
        w = self._w
        for o in self._others:
            if o != but and w[o + W_STATE] == PARKED and w[o + W_OP] == SPIN_LOCK:
                return True
        return False

    def _runs_on(self, opi: int) -> bool:
        """Whether the step about to be taken is covered by the grant's budget.

        Only while it changes nobody's runnability but this CPU's: this is what
        the strategy's promise assumed (every CPU that could run still can).
        """
        if self._budget <= 0:
            return False
        if opi == SPIN_LOCK:
            return not self._lock_held() and not self._waiters()
        return not self._unlocked or not self._waiters()

    def after(self, op: str, target: int, result: int, value: int) -> None:
        w = self._w
        r = self._ring + (self._ran - 1) * REC
        w[r + R_AFTER] = value
        # SEAMCALL statuses are 64-bit: split across two words (stored as signed int32)
        if 0 <= result <= _I32_MAX:
            w[r + R_LO] = result
            w[r + R_HI] = 0
        else:
            w[r + R_LO] = wrap32(result)
            w[r + R_HI] = wrap32(result >> 32)

    def close(self) -> None:
        """Release the views, so the segments can close."""
        self._rc.release()
        self._log.release()

    def wait_command(self) -> tuple[int, int]:
        """Idle between executions: park, then return (command, argument)."""
        self._budget = 0
        self._segment = -1
        self._doorbell.release()
        acquire_watching(self._grant, self._parent)
        w, base = self._w, self._base
        seed = (w[base + W_ARG] & 0xFFFFFFFF) | ((w[base + W_ARG_HI] & 0xFFFFFFFF) << 32)
        return int(w[base + W_CMD]), seed


def workload_rng(seed: int, cpu: int) -> random.Random:
    return random.Random(f"explore:{seed}:{cpu}")
