"""The one small interface every scheduling strategy implements, and what they share.

The shape is shuttle's: the controller calls ``new_execution()`` before each
execution (False: the strategy has nothing left), ``next_cpu(runnable,
current, pending)`` at every scheduling point to pick which parked CPU may take
the next step, ``next_u64()`` whenever the workload wants a random number, and
``end_execution(outcome)`` when an execution is over. A strategy never sees
processes or semaphores, so each one is a deterministic function of its seed
and of what it is shown, and can be tested without any process at all.

A strategy may also say in advance that the CPU it just chose takes the next
steps too (``lookahead``): the controller then lets that CPU run on without a
hand-off and asks ``next_cpu`` for those steps afterwards, which must confirm
every one. The decisions, and so every execution, are the same either way;
only the cost of a step changes.

``pending`` is the dependency information partial-order strategies (DPOR, POS)
need: for *every parked CPU*, runnable or blocked, the :class:`Access` its next
step may perform. Strategies that do not use it ignore it, and callers that do
not have it may leave it out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, runtime_checkable

from shmpamt.errors import SchedulingError

_MASK64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
#: CPUs one search schedules at most: runnable sets travel as bit masks, and the board
#: keeps one table entry per mask
MAX_EXPLORE_CPUS: Final = 8


class Nondeterminism(SchedulingError):
    """Replaying a recorded prefix met a different runnable set: the run is not deterministic."""


class ScheduleMismatch(SchedulingError):
    """A replayed schedule names a CPU that is not runnable at that step."""


class SleepBlocked(Exception):
    """Raised by ``next_cpu``: abandon this execution now, it can only repeat explored ones.

    Not a :class:`SchedulingError`: nothing went wrong. The controller catches it,
    ends the execution (no further grants; parked CPUs are aborted as after a
    step limit) and calls ``end_execution("sleep-blocked")``; any violations seen
    before are real and stay reported.
    """


#: how an execution ended, as the controller tells ``end_execution``
Outcome = Literal["complete", "deadlock", "step-limit", "sleep-blocked"]
OUTCOMES: Final[tuple[str, ...]] = ("complete", "deadlock", "step-limit", "sleep-blocked")

#: what a finished strategy has shown: every class, every class within a bound, or samples
Claim = Literal["verified", "bounded", "sampled"]


@dataclass(frozen=True, slots=True)
class Access:
    """The objects a parked CPU's next step may read and may change (opaque integer ids).

    Over-approximations are safe (more dependence, less reduction); missing an
    object is not (two conflicting steps would be treated as commuting). In
    the rig: ``spin_lock`` and ``spin_unlock`` read and write the lock's id
    whether or not it is held (a CPU blocked at ``spin_lock`` stays in
    ``pending`` with that access); read-modify-write atomics write their slot
    even when they may fail (inc_not_zero, cmpxchg), until ``executed`` says
    one left it unchanged; page alloc/free write the
    pool; a SEAMCALL writes the module state it may touch (one id for the whole
    module is always safe).
    """

    reads: frozenset[int] = frozenset()
    writes: frozenset[int] = frozenset()
    #: blocking locks this step takes (it waits while another CPU holds one): a subset
    #: of ``writes``; a try-lock, whose failure is an outcome, is not one
    acquires: frozenset[int] = frozenset()
    #: blocking locks this step releases (its CPU holds each until then)
    releases: frozenset[int] = frozenset()

    @classmethod
    def of(cls, reads: Sequence[int] = (), writes: Sequence[int] = ()) -> Access:
        """Convenience constructor from any sequences of ids."""
        return cls(frozenset(reads), frozenset(writes))


def dependent(a: Access, b: Access) -> bool:
    """True when the order of the two steps can matter: one writes what the other touches."""
    return not (
        a.writes.isdisjoint(b.writes)
        and a.writes.isdisjoint(b.reads)
        and b.writes.isdisjoint(a.reads)
    )


@runtime_checkable
class Scheduler(Protocol):
    """Chooses interleavings. One instance lives across all executions of one exploration."""

    #: short strategy name for reports ("random", "pct", "dfs", "replay")
    name: str

    def new_execution(self) -> bool:
        """Start the next execution; False when the strategy has nothing left to run."""
        ...

    def next_cpu(
        self,
        runnable: Sequence[int],
        current: int | None,
        pending: Mapping[int, Access] | None = None,
    ) -> int:
        """The CPU (one of ``runnable``) that takes the next step.

        ``current`` is the CPU that took the previous step, None before the first.
        ``pending`` maps every parked CPU (runnable or blocked; finished CPUs are
        absent) to the access of its next step. May raise :class:`SleepBlocked`.
        """
        ...

    def executed(self, access: Access) -> None:
        """What the step just granted actually did (called only if ``uses_pending``).

        At most ``pending``'s access for that CPU: a conditional atomic that
        failed only read its slot. Strategies that analyse executions may use
        it in place of the pending access.
        """
        ...

    def violated(self, step: int) -> None:
        """Step ``step`` of the current execution logged a violation (told before any
        later decision, and only to a strategy that ``halts``)."""
        ...

    def end_execution(self, outcome: str, pending: Mapping[int, Access] | None = None) -> None:
        """The execution just ended with ``outcome`` (see :data:`OUTCOMES`).

        ``pending``: the parked CPUs at the end (after a deadlock or step limit),
        filled like ``next_cpu``'s; strategies that analyse executions use it.
        """
        ...

    def next_u64(self) -> int:
        """A random number for the workload, reproducible from ``workload_seed``."""
        ...

    @property
    def workload_seed(self) -> int:
        """Seed of this execution's ``next_u64`` stream: record it in the Schedule."""
        ...

    def coverage(self) -> str:
        """One line saying what the executions so far have covered."""
        ...

    # -- what the controller uses to grant several steps at once --------------------

    #: whether ``next_cpu`` reads ``pending`` (the controller computes it only then)
    uses_pending: bool
    #: whether an execution's search ends at its first violation (``violated``)
    halts: bool
    #: CPU choices of the current execution, in order
    steps: list[int]
    #: CPU choices over all executions so far
    total_steps: int

    @property
    def finder(self) -> str:
        """The strategy that chose the current execution (a portfolio names its member)."""
        ...

    def follow(self, decisions: Sequence[tuple[Sequence[int], int]], cpu: int | None) -> int:
        """Decisions already taken (on a promise or by the strategy's rule), made at
        once; how many chose as recorded before the first that did not."""
        ...

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        """How many of the next decisions (at most ``limit``) will pick ``cpu`` again;
        a promise the controller checks through ``next_cpu`` or ``follow``."""
        ...

    def uniform_numbers(self, limit: int) -> list[int] | None:
        """The next numbers of a strategy whose every decision is the uniform rule, so
        the CPUs can decide themselves; None for any other strategy."""
        ...

    def scripted_choices(self, limit: int) -> list[int] | None:
        """The CPUs the next decisions (at most ``limit``) will choose whatever the state
        is, so the CPUs can grant each other; None or empty when there are none."""
        ...

    # -- what the search loop reports -----------------------------------------------

    @property
    def skipped_last(self) -> bool:
        """The execution that just ended is another job's to count (sharded DPOR only)."""
        ...

    @property
    def claim(self) -> Claim:
        """What the executions so far show: verified, bounded or sampled."""
        ...

    @property
    def distinct_schedules(self) -> int:
        """Distinct CPU sequences run so far."""
        ...

    # -- injected faults (:mod:`shmpamt.schedulers.faults`) ---------------------------

    #: whether ``saw_faults`` wants the fault points of every execution
    wants_fault_points: bool

    def board_faults(self) -> dict[int, list[tuple[int, int]]]:
        """The current execution's injections as the CPUs apply them: per CPU, a list of
        (fault point, mask of kinds injected there); empty: no fault."""
        ...

    def saw_faults(self, points: Mapping[int, Sequence[int]]) -> None:
        """The kind of each fault point each CPU passed in the execution just ended."""
        ...

    def saw_fault_steps(self, steps: Sequence[tuple[int, int, int, int, bool]]) -> None:
        """The same fault points by step: (step index, cpu, its point index, kind,
        whether it was injected), for a search that branches on outcomes at its steps."""
        ...


@functools.cache
def below_limit(n: int) -> int:
    """Numbers below this are taken by ``below(n)``: a whole number of n-sized blocks."""
    return (1 << 64) - (1 << 64) % n


class SplitMix64:
    """A tiny portable PRNG, so a seed means the same numbers on every Python version."""

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64
        self._ahead: list[int] = []  # numbers drawn by ahead(), in order; taken up to _next
        self._next = 0

    def next_u64(self) -> int:
        ahead = self._ahead
        if ahead:
            x = ahead[self._next]
            self._next += 1
            if self._next == len(ahead):
                ahead.clear()
                self._next = 0
            return x
        return self._draw()

    def ahead(self, k: int) -> list[int]:
        """The next ``k`` numbers ``next_u64`` will return, without taking them."""
        buf, nxt = self._ahead, self._next
        need = nxt + k - len(buf)
        if need > 0:
            # _draw, inlined: a stream asks for a run of numbers at once
            st, m = self._state, _MASK64
            for _ in range(need):
                st = (st + _GOLDEN) & m
                z = ((st ^ (st >> 30)) * 0xBF58476D1CE4E5B9) & m
                z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
                buf.append(z ^ (z >> 31))
            self._state = st
        return buf[nxt : nxt + k]

    def skip(self, k: int) -> None:
        """Take the next ``k`` numbers, already read with ``ahead``."""
        self._next += k
        # Invariant: only numbers already drawn by ahead() are skipped.
        assert self._next <= len(self._ahead), "skip past the numbers read ahead"
        if self._next == len(self._ahead):
            self._ahead.clear()
            self._next = 0

    def _draw(self) -> int:
        # the same as the loop in ahead()
        self._state = (self._state + _GOLDEN) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """Uniform in [0, n) without modulo bias."""
        if n <= 0:
            raise ValueError("below() needs n >= 1")
        limit = below_limit(n)
        while True:
            x = self.next_u64()
            if x < limit:
                return x % n

    def sample(self, population: Sequence[int], k: int) -> list[int]:
        """``k`` distinct elements of ``population`` (partial Fisher-Yates)."""
        pool = list(population)
        k = min(k, len(pool))
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def uniform_pick(x: int, n: int) -> int:
    """The uniform rule: the index among ``n`` runnable CPUs (in order) that the
    number ``x`` picks, or -1 when ``x`` is rejected (the rule draws again), so
    that every index is equally likely."""
    return x % n if x < below_limit(n) else -1


def default_choice(runnable: Sequence[int], current: int | None) -> int:
    """The non-preemptive choice: keep running ``current`` if it can, else the lowest CPU.

    DFS takes it first at every new step, and replay follows it once a
    schedule's recorded steps run out, so a truncated schedule still means
    exactly one execution.
    """
    if not runnable:
        raise SchedulingError("no runnable CPU: every CPU is blocked (deadlock) or done")
    if current is not None and current in runnable:
        return current
    return min(runnable)


class BaseScheduler:
    """Bookkeeping every strategy shares: execution/step counts, distinct schedules, data."""

    name = "base"
    #: whether ``next_cpu`` reads ``pending`` (the controller computes it only then)
    uses_pending = False
    #: whether ``saw_faults`` wants the fault points of every execution
    wants_fault_points = False
    #: whether an execution's search ends at its first violation (``violated``)
    halts = False

    def __init__(self, workload_seed: int = 0) -> None:
        self._base_seed = workload_seed & _MASK64
        self._seed = self._base_seed
        self._data = SplitMix64(self._seed)
        self.executions = 0
        self.total_steps = 0
        #: steps of the longest execution so far
        self.max_steps = 0
        #: most CPUs seen runnable at once, or the highest CPU id + 1
        self.cpus_seen = 0
        #: CPU choices of the current execution, in order
        self.steps: list[int] = []
        #: CPU choices of the execution before the current one
        self.last_steps: tuple[int, ...] = ()
        #: outcome the controller reported for the last execution ("" if none yet)
        self.last_outcome = ""
        self._distinct: set[int] = set()

    # -- what subclasses override ----------------------------------------------

    def _start(self) -> bool:
        """Prepare the next execution (counters already reset); False when done."""
        return True

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        raise NotImplementedError

    def _decide(
        self, runnable: Sequence[int], current: int | None, pending: Mapping[int, Access] | None
    ) -> int:
        """Strategies that use dependency information override this instead of ``_choose``."""
        return self._choose(runnable, current)

    def _seed_for(self, execution: int) -> int:
        """Workload seed of the given execution (0-based); fixed unless overridden."""
        return self._base_seed

    @property
    def finder(self) -> str:
        """The strategy that chose the current execution (a portfolio names its member)."""
        return self.name

    # -- the Scheduler interface -------------------------------------------------

    def new_execution(self) -> bool:
        self._finish()
        if not self._start():
            return False
        self._seed = self._seed_for(self.executions) & _MASK64
        self._data = SplitMix64(self._seed)
        self.executions += 1
        return True

    def next_cpu(
        self,
        runnable: Sequence[int],
        current: int | None,
        pending: Mapping[int, Access] | None = None,
    ) -> int:
        if not runnable:
            raise SchedulingError("next_cpu called with no runnable CPU")
        # Invariant: every runnable CPU is parked, so it has a pending access.
        if pending is not None:
            for c in runnable:
                if c not in pending:
                    raise SchedulingError(
                        f"pending accesses {sorted(pending)} do not cover runnable "
                        f"{sorted(runnable)}"
                    )
        top = max(runnable) + 1  # CPU ids are distinct, so at least len(runnable)
        if top > self.cpus_seen:
            self.cpus_seen = top
        cpu = self._decide(runnable, current, pending)
        # Invariant: a strategy only ever grants a step to a runnable CPU.
        if cpu not in runnable:
            raise SchedulingError(f"{self.name} chose cpu {cpu}, not in runnable {list(runnable)}")
        self.steps.append(cpu)
        self.total_steps += 1
        return cpu

    def executed(self, access: Access) -> None:
        """Only DPOR refines its analysis with what a step did."""

    def violated(self, step: int) -> None:
        """Only DPOR can end an execution's search at its first violation."""

    def board_faults(self) -> dict[int, list[tuple[int, int]]]:
        """No fault is injected unless a fault strategy says so."""
        return {}

    def saw_faults(self, points: Mapping[int, Sequence[int]]) -> None:
        """Only fault strategies learn from the fault points an execution passed."""

    def saw_fault_steps(self, steps: Sequence[tuple[int, int, int, int, bool]]) -> None:
        """Only DPOR with outcome branching learns where its steps' fault points were."""

    def follow(self, decisions: Sequence[tuple[Sequence[int], int]], cpu: int | None) -> int:
        """Decisions already taken, made at once: each ``(runnable, chosen)`` asked
        with no ``pending`` (for strategies that do not read it) and the CPU chosen
        before as the current one, starting from ``cpu`` (None: the first step of
        an execution). These are steps CPUs
        took on a promise (``lookahead``) or by the strategy's rule
        (``uniform_numbers``). Returns how many chose as recorded before the first
        that did not (which breaks the promise, and ends it).
        """
        current: int | None = cpu
        for i, (runnable, want) in enumerate(decisions):
            current = self.next_cpu(runnable, current)
            if current != want:
                return i
        return len(decisions)

    def _book(self, decisions: Sequence[tuple[Sequence[int], int]], made: Sequence[int]) -> None:
        """Keep ``next_cpu``'s books for decisions made at once: ``made[i]`` was chosen
        from ``decisions[i]``'s runnable set."""
        if made:
            top = max(max(r) for r, _ in decisions[: len(made)]) + 1
            self.cpus_seen = max(self.cpus_seen, top)
        self.steps.extend(made)
        self.total_steps += len(made)

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        """How many of the next decisions (at most ``limit``) will pick ``cpu`` again,
        if each is asked with the same ``runnable`` and ``cpu`` as the current one.

        ``cpu`` is what ``next_cpu`` just returned. The answer must not change the
        strategy's state or what it will decide: the controller asks ``next_cpu``
        for those steps afterwards, with ``pending`` as it would have been, and
        treats a different answer as a broken promise. A strategy whose choices
        depend on ``pending`` promises only what holds whatever it will be (DPOR:
        the steps of its recorded prefix). When only ``cpu`` can run, the
        controller does not ask: every strategy must pick it.
        """
        return 0

    def uniform_numbers(self, limit: int) -> list[int] | None:
        """For a strategy whose every decision is the uniform rule (``uniform_pick``
        with the next number it draws, drawing again when that says -1): the next
        ``limit`` numbers, without taking them, so that the CPUs can make the
        decisions themselves. None (the default) for any other strategy.
        """
        return None

    def scripted_choices(self, limit: int) -> list[int] | None:
        """For a strategy that has already fixed its next decisions whatever the state
        will be (DPOR's recorded prefix): the CPUs they choose, at most ``limit``, in
        order, so that the CPUs can grant each other. Each is still asked through
        ``next_cpu`` afterwards, with the state as it was, and must answer the same; a
        decision whose state is not the recorded one is the strategy's to report
        (``Nondeterminism``). None (the default) for any other strategy.
        """
        return None

    @property
    def skipped_last(self) -> bool:
        """The execution that just ended is another job's to count (sharded DPOR only)."""
        return False

    def end_execution(self, outcome: str, pending: Mapping[int, Access] | None = None) -> None:
        """Remember how the execution ended; strategies that learn from it extend this."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        self.last_outcome = outcome

    def next_u64(self) -> int:
        return self._data.next_u64()

    @property
    def claim(self) -> Claim:
        """What the executions so far support; sampling strategies never claim more."""
        return "sampled"

    @property
    def workload_seed(self) -> int:
        return self._seed

    @property
    def distinct_schedules(self) -> int:
        """Distinct step sequences among the finished executions (and the current one)."""
        return len(self._distinct) + (1 if self.steps and self._key() not in self._distinct else 0)

    def coverage(self) -> str:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------

    def _key(self) -> int:
        return hash((self._seed, tuple(self.steps)))

    def _finish(self) -> None:
        """Account for the execution that just ended (if any)."""
        if self.executions:
            self._distinct.add(self._key())
            self.max_steps = max(self.max_steps, len(self.steps))
        self.last_steps = tuple(self.steps)
        self.steps = []


class SeededSampler(BaseScheduler):
    """What a seeded sampling strategy shares: its own random stream, an optional cap on
    executions, and execution i using workload seed ``workload_seed + i``
    (``vary_workload``), so every (seed, steps) pair it reports replays."""

    def __init__(
        self,
        seed: int = 0,
        max_executions: int | None = None,
        workload_seed: int | None = None,
        vary_workload: bool = True,
    ) -> None:
        super().__init__(seed if workload_seed is None else workload_seed)
        self.seed = seed
        self.max_executions = max_executions
        self.vary_workload = vary_workload
        self._rng = SplitMix64(seed)

    def _start(self) -> bool:
        return self.max_executions is None or self.executions < self.max_executions

    def _seed_for(self, execution: int) -> int:
        return self._base_seed + (execution if self.vary_workload else 0)
