"""The CPU side of controlled scheduling: the ``Kernel`` hook that parks a CPU
before every primitive, takes grants, multi-step runs and streams (see
:mod:`shmpamt.explorer.board` for the protocol and the words it writes).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from shmpamt.explorer.board import (
    ATOMIC_OPS,
    CMD_GO,
    CMD_START,
    CPU_SETS,
    FAULT_KIND,
    I32_MAX,
    I32_MIN,
    OP_INDEX,
    PARKED,
    R_AFTER,
    R_BEFORE,
    R_CALL,
    R_FAULT,
    R_HI,
    R_LO,
    R_LOG,
    R_OP,
    R_OPND_A,
    R_OPND_B,
    R_TARGET,
    REC,
    S_ALIVE,
    S_AT_LOCK,
    S_GEN,
    S_LEN,
    S_ON,
    S_SCRIPT,
    S_STEPS,
    S_USED,
    SPIN_LOCK,
    SPIN_UNLOCK,
    STEP_REC,
    W_ARG,
    W_ARG_HI,
    W_CMD,
    W_FAULT_N,
    W_FAULTS,
    W_OP,
    W_OPND_A,
    W_OPND_B,
    W_RAN,
    W_RUN_ON,
    W_STATE,
    W_TARGET,
    WORDS,
    Aborted,
    ExploreBoard,
    join64,
    split64,
)
from shmpamt.machine.atomic import RefcountArray, wrap32
from shmpamt.machine.ipc import acquire_watching
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.records.execution import call_id
from shmpamt.schedulers.base import uniform_pick


class ExploreHook:
    """The CPU side of a scheduling point: report where we are, wait for a grant."""

    def __init__(
        self,
        board: ExploreBoard,
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
        self._run_on = 0  # steps left to take without parking
        self._ran = 0  # steps taken since the last grant
        self._r = self._ring  # the record of the step in progress
        self._streaming = False  # decisions are the CPUs' own (see "stream" above)
        self._gen = -1  # the stream this CPU's ring holds records of
        self._starting = False  # started by a stream: start the next CPU when we park
        self._bit = 1 << cpu
        self._call = 0  # the get/put call in progress (its call id), 0 outside both
        self._calls = 0  # get/put calls this CPU began in this execution
        self._points = 0  # fault points this CPU passed in this execution
        self._inject: dict[int, int] = {}  # this execution's injections: point -> kinds mask

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> int:
        """Wait for the step's grant; returns 1 when a fault is to be injected into it
        (the SEAMCALL answers BUSY, the allocator NULL), else 0."""
        w = self._w
        opi = OP_INDEX[op]
        ran = self._ran
        if a or b:
            a = a if I32_MIN <= a <= I32_MAX else wrap32(a)
            b = b if I32_MIN <= b <= I32_MAX else wrap32(b)
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
            self._run_on -= 1
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
        w[r + R_CALL] = self._call
        injected = 0
        kind = FAULT_KIND.get(opi)
        if kind is not None:
            point = self._points
            self._points = point + 1
            if self._inject.get(point, 0) >> kind & 1:
                injected = 1
                w[r + R_FAULT] = kind + 1
            else:
                w[r + R_FAULT] = 0
        else:
            w[r + R_FAULT] = 0
        # Read now: only this CPU runs, so this is exactly the value the primitive
        # will see (at park time another CPU could still have changed it).
        # An index out of range is the primitive's to report.
        self._slot = slot = target if opi in ATOMIC_OPS and 0 <= target < self._nrc else -1
        w[r + R_BEFORE] = self._rc[slot] if slot >= 0 else 0
        self._ran = ran + 1
        return injected

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
            self._run_on = 0
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
        self._run_on = w[base + W_RUN_ON]
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
        numbers ran out, nobody can run, or a scripted CPU cannot): the controller
        decides then.

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
        if w[s + S_SCRIPT]:
            chosen = self._numbers[used]
            if not mask >> chosen & 1:
                return -1  # not what was recorded: the controller finds out how
        else:
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
        """Whether the step about to be taken is covered by the grant's run-on.

        Only while it changes nobody's runnability but this CPU's: this is what
        the strategy's promise assumed (every CPU that could run still can).
        """
        if self._run_on <= 0:
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
        if 0 <= result <= I32_MAX:
            w[r + R_LO] = result
            w[r + R_HI] = 0
        else:
            w[r + R_LO], w[r + R_HI] = split64(result)

    def enter(self, helper: int) -> None:
        """The variant's get or put begins (``helper``: records.execution.GET or PUT):
        the steps until :meth:`leave` carry its call id, for the race report's nesting.
        Not a scheduling point: the schedule is the same with or without it."""
        self._calls += 1
        self._call = call_id(self._calls, helper)

    def leave(self) -> None:
        self._call = 0

    def close(self) -> None:
        """Release the views, so the segments can close."""
        self._rc.release()
        self._log.release()

    def wait_command(self) -> tuple[int, int]:
        """Idle between executions: park, then return (command, argument)."""
        self._run_on = 0
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
        seed = join64(w[base + W_ARG], w[base + W_ARG_HI])
        cmd = int(w[base + W_CMD])
        self._call = self._calls = 0
        if cmd == CMD_START:
            self._points = 0
            n = w[base + W_FAULT_N]
            f = base + W_FAULTS
            self._inject = {w[f + 2 * i]: w[f + 2 * i + 1] for i in range(n)}
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
