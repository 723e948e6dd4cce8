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

A grant may also start a *stream*, for a strategy whose every decision is
the uniform rule (a random walk: the k-th runnable CPU, k drawn from numbers
it has already determined). The grant carries those numbers, and the CPUs
make the decisions themselves: at each scheduling point the running CPU
works out who can run exactly as the controller would (itself parked where
it is), picks with the next number and grants that CPU, or runs on if it
picked itself. Each decision goes into the stream's step log with the
runnable set it was made from, and the controller wakes only when the
numbers run out or nobody can run; it then asks the strategy for the same
decisions (``follow``), so a broken rule is caught. A stream can start an
execution: each CPU starts the next at its first scheduling point, and the
last one makes the first decision.

A budget is a promise made for the CPUs that can run at the grant, so it
holds only while exactly those can: a CPU stops short (parks, and rings the
controller) before a step that changes that. Only the lock does: taking it
while another CPU waits at ``spin_lock`` (or when it is held: this CPU is
blocked), dropping it while one waits, and parking at ``spin_lock`` of a
held lock. A CPU that finishes rings the controller too.

Shared "sched board": the stream's numbers; per CPU its state, the parked
step (op, target, operands), the command and budget of the next grant, the
steps taken since, then the ring of their records; the stream's header and
step log. One grant semaphore per CPU and one doorbell semaphore back to the
controller.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt import tdx
from shmpamt.atomic import RefcountArray, wrap32
from shmpamt.config import MAX_EXPLORE_CPUS
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
from shmpamt.schedulers.base import uniform_pick

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

# The stream, one per board after the rings: while S_ON is set the CPUs make the
# decisions (see above) with its numbers (64-bit, ahead of the words: the board's
# `numbers`). Then the step log: per step, the CPU that took it, the runnable set
# it was picked from (one bit per CPU) and the violation total when it started.
S_ON: Final = 0
S_GEN: Final = 1  # which stream: a CPU's ring starts over in a new one
S_LEN: Final = 2  # numbers the stream has
S_USED: Final = 3  # numbers taken so far
S_STEPS: Final = 4  # entries in the step log
S_ALIVE: Final = 5  # CPUs not finished (one bit each)
S_AT_LOCK: Final = 6  # CPUs parked at spin_lock
S_HEAD: Final = 7
STEP_REC: Final = 3

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
#: numbers a stream carries at most: its steps fit every CPU's ring
STREAM_ROOM: Final = RING_SLOTS - 1
_NUMBERS_BYTES: Final = STREAM_ROOM * 8 + 8  # and the words stay 8-byte aligned


def _board_words(cpus: int) -> int:
    return cpus * _PER_CPU + S_HEAD + RING_SLOTS * STEP_REC


class Aborted(BaseException):
    """Raised inside a CPU to unwind an execution the controller abandoned."""

    def __init__(self, cmd: int) -> None:
        super().__init__(cmd)
        self.cmd = cmd  # CMD_ABORT, or CMD_EXIT when the whole session ends


#: the CPUs of each runnable-set bit mask, in order
CPU_SETS: Final = tuple(
    tuple(o for o in range(MAX_EXPLORE_CPUS) if m >> o & 1) for m in range(1 << MAX_EXPLORE_CPUS)
)


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
        end = _NUMBERS_BYTES + _board_words(cpus) * 4
        self.w: memoryview = segment.payload[_NUMBERS_BYTES:end].cast("i")
        #: the stream's numbers, as the strategy draws them
        self.numbers: memoryview = segment.payload[:_NUMBERS_BYTES].cast("Q")
        self.doorbell = doorbell
        self.grants = grants
        self._owner = owner

    @classmethod
    def create(cls, cpus: int, token: str) -> SchedBoard:
        size = _NUMBERS_BYTES + _board_words(cpus) * 4
        seg = Segment.create(make_name("sched", token), KIND_SCHED, size)
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
        words = (seg.payload_size - _NUMBERS_BYTES) // 4
        cpus = (words - S_HEAD - RING_SLOTS * STEP_REC) // _PER_CPU
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
    def stream(self) -> int:
        """Index in ``w`` of the stream's first word."""
        return self.cpus * _PER_CPU

    @property
    def step_log(self) -> int:
        """Index in ``w`` of the stream's step log."""
        return self.stream + S_HEAD

    def get(self, cpu: int, w: int) -> int:
        return int(self.w[cpu * WORDS + w])

    def set(self, cpu: int, w: int, v: int) -> None:
        self.w[cpu * WORDS + w] = wrap32(v)

    def close(self) -> None:
        for s in (self.doorbell, *self.grants):
            remove_semaphore(s, self._owner)
        self.w.release()  # the segment's mapping cannot close while a view is exported
        self.numbers.release()
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
        self._nrc = len(refcounts)
        self._slot = -1  # the refcount slot the step in progress works on, or -1
        self._log, self._log_total = log.total_view()
        self._base = cpu * WORDS
        self._others = [o * WORDS for o in range(board.cpus) if o != cpu]
        self._ring = board.ring(cpu)
        self._w = board.w
        self._grant = board.grants[cpu]
        self._grants = board.grants
        self._doorbell = board.doorbell
        self._ncpus = board.cpus
        self._stream = board.stream
        self._numbers = board.numbers
        self._step_log = board.step_log
        self._lock_held = lock_held
        self._budget = 0  # steps left to take without parking
        self._ran = 0  # steps taken since the last grant
        self._r = self._ring  # the record of the step in progress
        self._streaming = False  # decisions are the CPUs' own (see "stream" above)
        self._gen = -1  # the stream this CPU's ring holds records of
        self._starting = False  # started by a stream: start the next CPU when we park
        self._bit = 1 << cpu

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> None:
        w = self._w
        opi = OP_INDEX[op]
        ran = self._ran
        if a or b:
            a = a if _I32_MIN <= a <= _I32_MAX else wrap32(a)
            b = b if _I32_MIN <= b <= _I32_MAX else wrap32(b)
        if self._streaming:
            chosen = self._next_turn(opi) if self._starting else self._choose(opi)
            if chosen != self._cpu:
                # Where we are matters only to the others, and to the controller.
                self._park(opi, target, a, b)
                at = self._stream + S_AT_LOCK
                w[at] = w[at] | self._bit if opi == SPIN_LOCK else w[at] & ~self._bit
                (self._doorbell if chosen < 0 else self._grants[chosen]).release()
                ran = self._wait_grant()
        elif self._runs_on(opi):
            # Granted in advance: no hand-off. What the last step logged ends with it.
            self._budget -= 1
            w[self._ring + (ran - 1) * REC + R_LOG] = self._log[self._log_total]
        else:
            self._park(opi, target, a, b)
            self._doorbell.release()
            ran = self._wait_grant()
        self._r = r = self._ring + ran * REC
        w[r + R_OP] = opi
        w[r + R_TARGET] = target
        w[r + R_OPND_A] = a
        w[r + R_OPND_B] = b
        # Read now: only this CPU runs, so this is exactly the value the primitive
        # will see (at park time another CPU could still have changed it).
        # An index out of range is the primitive's to report.
        self._slot = slot = target if opi in ATOMIC_OPS and 0 <= target < self._nrc else -1
        w[r + R_BEFORE] = self._rc[slot] if slot >= 0 else 0
        self._ran = ran + 1

    def _park(self, opi: int, target: int, a: int, b: int) -> None:
        """Say where this CPU is: the step it takes next when granted, and how many
        it took (in a stream: all of its steps in it; their records are the ring)."""
        w, base = self._w, self._base
        w[base + W_RAN] = self._ran
        w[base + W_OP] = opi
        w[base + W_TARGET] = target
        w[base + W_OPND_A] = a
        w[base + W_OPND_B] = b
        w[base + W_STATE] = PARKED

    def _wait_grant(self) -> int:
        """Wait for a grant; returns the ring slot of the step it grants."""
        acquire_watching(self._grant, self._parent)
        w, base = self._w, self._base
        cmd = w[base + W_CMD]
        if cmd != CMD_GO:
            self._budget = 0
            self._streaming = False
            raise Aborted(cmd)
        if w[self._stream + S_ON]:
            self._streaming = True
            gen = w[self._stream + S_GEN]
            if gen != self._gen:  # a new stream: its records start over
                self._gen = gen
                self._ran = 0
            return self._ran
        self._streaming = False
        self._budget = w[base + W_BUDGET]
        return 0

    def _next_turn(self, mine: int) -> int:
        """Who goes next in a stream, this CPU being parked at op ``mine`` (-1: done):
        at the start of an execution the next CPU to start, else ``_choose``."""
        if self._starting:
            self._starting = False
            if self._cpu + 1 < self._ncpus:
                return self._cpu + 1  # its command is START, from the controller
        return self._choose(mine)

    def _choose(self, mine: int) -> int:
        """A stream's next decision: the CPU that takes the next step, or -1 (the
        numbers ran out, or nobody can run): the controller decides then.

        Who can run is what the controller would find: every parked CPU, but
        one at ``spin_lock`` of a held lock. This CPU is parked at op ``mine``
        (its words on the board are written only if it hands over), or not
        at all (-1: it is done).
        """
        w, s = self._w, self._stream
        used, have = w[s + S_USED], w[s + S_LEN]
        if used >= have:
            return -1
        me = self._bit
        mask = w[s + S_ALIVE]
        at_lock = w[s + S_AT_LOCK] & ~me | (me if mine == SPIN_LOCK else 0)
        if mask & at_lock and self._lock_held():
            mask &= ~at_lock
        if not mask:
            return -1
        runnable = CPU_SETS[mask]
        n = len(runnable)
        pick = uniform_pick(self._numbers[used], n)
        while pick < 0:  # the rule draws again: the next number decides
            used += 1
            if used >= have:
                return -1
            pick = uniform_pick(self._numbers[used], n)
        chosen = runnable[pick]
        w[s + S_USED] = used + 1
        k = w[s + S_STEPS]
        e = self._step_log + k * STEP_REC
        w[e] = chosen
        w[e + 1] = mask
        w[e + 2] = self._log[self._log_total]
        w[s + S_STEPS] = k + 1
        return chosen

    def _waiters(self) -> bool:
        """Whether another CPU is parked at ``spin_lock``: taking or dropping the
        lock changes whether it can run."""
        w = self._w
        return any(w[o + W_STATE] == PARKED and w[o + W_OP] == SPIN_LOCK for o in self._others)

    def _runs_on(self, opi: int) -> bool:
        """Whether the step about to be taken is covered by the grant's budget.

        Only while it changes nobody's runnability but this CPU's: this is what
        the strategy's promise assumed (every CPU that could run still can).
        """
        if self._budget <= 0:
            return False
        if opi == SPIN_LOCK:
            return not self._lock_held() and not self._waiters()
        # Dropping the lock (the step before this one) lets the waiters run.
        unlocked = self._w[self._ring + (self._ran - 1) * REC + R_OP] == SPIN_UNLOCK
        return not unlocked or not self._waiters()

    def after(self, op: str, target: int, result: int) -> None:
        w, r = self._w, self._r
        slot = self._slot
        w[r + R_AFTER] = self._rc[slot] if slot >= 0 else 0  # the value the atomic left
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
        self._w[self._base + W_RAN] = self._ran  # what it took since the last grant
        chosen = -1
        if self._streaming:  # the next decision is ours: we are done or stopped
            self._streaming = False
            alive = self._stream + S_ALIVE
            self._w[alive] &= ~self._bit
            chosen = self._next_turn(-1)
        (self._doorbell if chosen < 0 else self._grants[chosen]).release()
        acquire_watching(self._grant, self._parent)
        w, base = self._w, self._base
        seed = (w[base + W_ARG] & 0xFFFFFFFF) | ((w[base + W_ARG_HI] & 0xFFFFFFFF) << 32)
        cmd = int(w[base + W_CMD])
        if cmd == CMD_START and w[self._stream + S_ON]:
            # Started by a stream: our first scheduling point starts the next CPU,
            # and from then on we are granted by the CPUs (GO is ours to set).
            self._streaming = self._starting = True
            self._gen = w[self._stream + S_GEN]
            self._ran = 0
            w[base + W_CMD] = CMD_GO
        return cmd, seed


def workload_rng(seed: int, cpu: int) -> random.Random:
    return random.Random(f"explore:{seed}:{cpu}")
