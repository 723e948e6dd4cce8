"""Parking: the CPU side of controlled scheduling, and the board both sides share.

In explore mode the ``Kernel`` hook parks a CPU before every primitive (atomic,
lock, page allocator, SEAMCALL) and waits for a grant; the controller
(:mod:`shmpamt.engine.explore`) picks exactly one CPU to run until its next
point. The primitives are real: shared-memory atomics, the semaphore, the
daemon's SEAMCALLs; only the interleaving is chosen.

Shared "sched board", per CPU: state, the pending op and its target, the value
of that refcount before the op, and the result/value after the previous op;
one grant semaphore per CPU and one doorbell semaphore back to the controller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

import posix_ipc

from shmpamt import tdx
from shmpamt.atomic import RefcountArray, wrap32
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

# per-CPU words
W_STATE: Final = 0
W_OP: Final = 1
W_TARGET: Final = 2
W_BEFORE: Final = 3
W_OPND_A: Final = 4  # operands of atomic_add_unless (a, u) and atomic_cmpxchg (old, new)
W_AFTER: Final = 5  # refcount value after it
W_CMD: Final = 6  # controller -> CPU: what to do on the next grant
W_ARG: Final = 7  # execution id / workload seed for CMD_START
W_LAST_LO: Final = 8  # 64-bit result words for SEAMCALL statuses (lo, hi)
W_LAST_HI: Final = 9
W_ARG_HI: Final = 10  # high 32 bits of the workload seed
W_OPND_B: Final = 11
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
        # Plain 32-bit loads and stores through a typed view: the board only changes
        # hands through a semaphore post/wait pair (a full barrier), so nothing here
        # needs an atomic read-modify-write, and an indexed view costs tens of ns
        # where a call through the atomics binding costs a microsecond per word.
        self.w: memoryview = segment.payload[: cpus * WORDS * 4].cast("i")
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
        self, board: SchedBoard, cpu: int, refcounts: RefcountArray, controller: int
    ) -> None:
        # Grants come only from the controller, our parent: if it dies (SIGKILL), a
        # plain wait would park this CPU forever. acquire_watching gives up instead.
        # Its pid comes with the system's names: if it died before this CPU started,
        # os.getppid() would already name whoever adopts orphans.
        self._parent = controller
        self._cpu = cpu
        self._rc = refcounts
        self._base = cpu * WORDS
        self._w = board.w
        self._grant = board.grants[cpu]
        self._doorbell = board.doorbell

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> None:
        w, base = self._w, self._base
        w[base + W_OP] = OP_INDEX[op]
        w[base + W_TARGET] = target
        w[base + W_OPND_A] = wrap32(a)
        w[base + W_OPND_B] = wrap32(b)
        w[base + W_STATE] = PARKED
        self._doorbell.release()
        acquire_watching(self._grant, self._parent)
        cmd = w[base + W_CMD]
        if cmd != CMD_GO:
            raise Aborted(cmd)
        # Read after the grant: only this CPU runs now, so this is exactly the
        # value the primitive will see (at park time another CPU could still change it).
        w[base + W_BEFORE] = self._rc.read(target) if op.startswith("atomic") else 0

    def after(self, op: str, target: int, result: int, value: int) -> None:
        w, base = self._w, self._base
        w[base + W_AFTER] = value
        # SEAMCALL statuses are 64-bit: split across two words (stored as signed int32)
        w[base + W_LAST_LO] = wrap32(result)
        w[base + W_LAST_HI] = wrap32(result >> 32)

    def wait_command(self) -> tuple[int, int]:
        """Idle between executions: park, then return (command, argument)."""
        self._doorbell.release()
        acquire_watching(self._grant, self._parent)
        w, base = self._w, self._base
        seed = (w[base + W_ARG] & 0xFFFFFFFF) | ((w[base + W_ARG_HI] & 0xFFFFFFFF) << 32)
        return int(w[base + W_CMD]), seed


def workload_rng(seed: int, cpu: int) -> random.Random:
    return random.Random(f"explore:{seed}:{cpu}")
