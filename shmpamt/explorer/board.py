"""The explore board's wire format: the words the controller and the CPUs share.

The CPU side lives in :mod:`shmpamt.explorer.hook`, the controller's in
:mod:`shmpamt.explorer.session`; this module is the contract between them.

In explore mode the ``Kernel`` hook parks a CPU before every primitive (atomic,
lock, page allocator, SEAMCALL) and waits for a grant; the controller
(:mod:`shmpamt.explorer.session`) picks exactly one CPU to run until its next
point. The primitives are real: shared-memory atomics, the semaphore, the
daemon's SEAMCALLs; only the interleaving is chosen.

A grant may cover several steps (a *run-on*): when the strategy has already decided that the
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

A *scripted* stream (``S_SCRIPT``) carries the CPUs themselves instead of
numbers: the decisions a strategy has already fixed whatever the state is
(DPOR's recorded prefix). The running CPU grants the next CPU of the script
if that one can run, and hands back to the controller otherwise (the
controller then finds the state differs from the recording); the controller
checks every decision afterwards with the footprints each would have seen.

A run-on is a promise made for the CPUs that can run at the grant, so it
holds only while exactly those can: a CPU stops short (parks, and rings the
controller) before a step that changes that. Only the lock does: taking it
while another CPU waits at ``spin_lock`` (or when it is held: this CPU is
blocked), dropping it while one waits, and parking at ``spin_lock`` of a
held lock. A CPU that finishes rings the controller too.

Shared "sched board": the stream's numbers; per CPU its state, the parked
step (op, target, operands), the command and run-on of the next grant, the
steps taken since, then the ring of their records; the stream's header and
step log. One grant semaphore per CPU and one doorbell semaphore back to the
controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt import tdx
from shmpamt.machine.atomic import wrap32
from shmpamt.machine.ipc import (
    Segment,
    create_semaphore,
    make_name,
    open_semaphore,
    remove_semaphore,
)
from shmpamt.machine.kernel import END_SUFFIX, PRIMITIVES
from shmpamt.schedulers.base import MAX_EXPLORE_CPUS
from shmpamt.schedulers.faults import FAULT_OPS, MAX_FAULTS

# Every op a point can carry, in a fixed order: the index is what crosses the board.
OPS: Final[tuple[str, ...]] = (
    *PRIMITIVES,
    *(tdx.leaf_name(leaf) for leaf in (
        tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM, tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE, tdx.SHMPAMT_NOP, tdx.SHMPAMT_STATUS,
    )),
    # a two-step SEAMCALL's second point (appended: the indices above do not move)
    *(tdx.leaf_name(leaf) + END_SUFFIX for leaf in (
        tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM, tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE,
    )),
)  # fmt: skip
OP_INDEX: Final = {op: i for i, op in enumerate(OPS)}
SPIN_LOCK: Final = OP_INDEX["spin_lock"]
SPIN_UNLOCK: Final = OP_INDEX["spin_unlock"]
I32_MIN: Final = -(2**31)
I32_MAX: Final = 2**31 - 1
#: ops on a refcount slot (their target is the slot)
ATOMIC_OPS: Final = frozenset(i for i, op in enumerate(OPS) if op.startswith("atomic"))
#: fault points (schedulers.faults.FAULT_OPS) by op index -> the kind injected there
FAULT_KIND: Final = {OP_INDEX[op]: kind for op, kind in FAULT_OPS.items()}

# per-CPU words
W_STATE: Final = 0
W_OP: Final = 1  # the parked step: op index, target, operands
W_TARGET: Final = 2
W_OPND_A: Final = 3  # operands of atomic_add_unless (a, u) and atomic_cmpxchg (old, new)
W_OPND_B: Final = 4
W_CMD: Final = 5  # controller -> CPU: what to do on the next grant
W_ARG: Final = 6  # workload seed for CMD_START (low, high 32 bits)
W_ARG_HI: Final = 7
W_RUN_ON: Final = 8  # controller -> CPU: steps it may take after the granted one, unparked
W_RAN: Final = 9  # CPU -> controller: steps taken since the grant (their records: the ring)
# controller -> CPU, read at CMD_START: the execution's injected faults for this CPU
# (schedulers.faults): how many, then per injection its fault point and kinds mask
W_FAULT_N: Final = 10
W_FAULTS: Final = 11
FAULT_SLOTS: Final = 8  # = schedulers.faults.MAX_FAULTS
WORDS: Final = W_FAULTS + 2 * FAULT_SLOTS

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
S_SCRIPT: Final = 7  # 1: the numbers are the CPUs to grant, in order (a scripted stream)
S_HEAD: Final = 8
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
R_CALL: Final = 9  # the variant's get/put call the step is part of (records.execution.call_id)
R_FAULT: Final = 10  # the fault injected into the step: its kind's index + 1, or 0
REC: Final = 11

# states
IDLE, PARKED, DONE, FAILED = 0, 1, 2, 3
# commands
CMD_NONE, CMD_START, CMD_GO, CMD_ABORT, CMD_EXIT = 0, 1, 2, 3, 4
KIND_SCHED: Final = 0x53434844
_PER_CPU: Final = WORDS + RING_SLOTS * REC
#: numbers a stream carries at most: its steps fit every CPU's ring
STREAM_ROOM: Final = RING_SLOTS - 1
_NUMBERS_BYTES: Final = STREAM_ROOM * 8 + 8  # and the words stay 8-byte aligned


assert FAULT_SLOTS == MAX_FAULTS, "a plan of MAX_FAULTS injections must fit one CPU's words"


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
class ExploreBoardNames:
    board: str
    doorbell: str
    grants: tuple[str, ...]


class ExploreBoard:
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
    def create(cls, cpus: int, token: str) -> ExploreBoard:
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
    def attach(cls, names: ExploreBoardNames) -> ExploreBoard:
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
    def names(self) -> ExploreBoardNames:
        grants = tuple(g.name for g in self.grants)
        return ExploreBoardNames(self.segment.name, self.doorbell.name, grants)

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


def split64(v: int) -> tuple[int, int]:
    """A 64-bit value as the board's two signed 32-bit words (low, high).

    The one encoding of 64-bit values on the board: grant arguments (a workload
    seed) and SEAMCALL statuses in the ring both use it, with :func:`join64`.
    """
    return wrap32(v), wrap32(v >> 32)


def join64(lo: int, hi: int) -> int:
    """The unsigned 64-bit value :func:`split64` wrote."""
    return (lo & 0xFFFFFFFF) | ((hi & 0xFFFFFFFF) << 32)
