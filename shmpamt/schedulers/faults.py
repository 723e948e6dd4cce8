"""Faults as choices of the search: which fault point of which CPU gets which injected outcome.

A *fault point* is a step whose outcome the search may choose instead of the
module or the allocator: the (begin) step of PAMT.ADD, PAMT.REMOVE, PAGE.AUG
and PAGE.RECLAIM (injected outcome: TDX_OPERAND_BUSY) and every
``alloc_page`` (injected outcome: NULL). Outcome 0 is "as the module or the
allocator decides".

An injection names a fault point by the CPU and its position among that CPU's
fault points in the execution (``point``: 0 is the CPU's first). What a CPU
does up to its n-th fault point depends only on the steps it took and the
values it read, so "inject at CPU c's n-th point" is a choice local to that
step: it commutes with every other CPU's scheduling except through what the
step then does. That is what lets any search run unchanged under a *plan* (a
set of injections fixed for the execution): the system is deterministic given
the schedule and the plan.

* Exhaustive search inside one tree: DPOR with ``fault_kinds`` branches on the
  outcome at the node where the step is taken (see :mod:`.dpor`); the plan of
  each execution is read off its replayed prefix. That is the default for dpor.
* Exhaustive search over faults, a tree per plan (:class:`FaultTree`, for DFS,
  and for DPOR under ``SHMPAMT_FAULT_SEARCH=plans``): run the inner search
  to the end with no plan, then with every plan of one injection
  that an execution reached (each (cpu, point) seen with a kind in the spec),
  then every plan of two grown from the one-fault executions, up to
  ``max_faults``. Every execution with at most K injected faults is an
  execution of the plan made of exactly its faults, and that plan is reached:
  drop its last fault and, by induction, the smaller plan's search ran an
  execution equivalent up to that point, which passed the same (cpu, point)
  with the same kind. A plan whose fault is never reached repeats no-fault
  executions: wasted work, never a missed one.
* Sampling (:class:`FaultDraw`): each execution, with probability ``share``,
  every fault point is injected with its kind's probability, at most
  ``max_faults`` per execution. The draw is one number per (cpu, point), made
  before the execution, so the CPUs apply it themselves (random walk's streams
  run on unchanged) and the inner strategy's own random numbers are untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from shmpamt import tdx
from shmpamt.records.schedule_string import FAULT_KINDS
from shmpamt.schedulers.base import Access, BaseScheduler, Claim, SplitMix64

#: injected outcomes, in a fixed order: the index is what crosses the board
KINDS: Final = FAULT_KINDS
KIND_INDEX: Final = {k: i for i, k in enumerate(KINDS)}
#: the op name of each fault point -> the kind injected there
FAULT_OPS: Final[dict[str, int]] = {
    tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_ADD): 0,
    tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_REMOVE): 1,
    tdx.leaf_name(tdx.TDH_MEM_PAGE_AUG): 2,
    tdx.leaf_name(tdx.TDH_PHYMEM_PAGE_RECLAIM): 3,
    "alloc_page": 4,
}
#: most injected faults per execution a search may ask for (each one multiplies the work)
MAX_FAULTS: Final = 8
#: the default sampling: every kind, each point with this probability
DEFAULT_PROBABILITY: Final = 0.05
#: share of a sampler's executions that may get faults by default
DEFAULT_SHARE: Final = 0.5


@dataclass(frozen=True, order=True, slots=True)
class Injection:
    """Inject ``kind`` (index in :data:`KINDS`) at ``cpu``'s ``point``-th fault point."""

    cpu: int
    point: int
    kind: int

    def __str__(self) -> str:
        return f"cpu {self.cpu} fault point {self.point}: {KINDS[self.kind]}"


#: an execution's injections, sorted
Plan = tuple[Injection, ...]
#: what the board carries per CPU: (point, kinds mask) pairs
BoardPlan = dict[int, list[tuple[int, int]]]


def board_plan(plan: Plan) -> BoardPlan:
    """A plan as the CPUs apply it: per CPU, (point, mask of the kinds injected there)."""
    out: BoardPlan = {}
    for inj in plan:
        out.setdefault(inj.cpu, []).append((inj.point, 1 << inj.kind))
    return out


def kinds_of(probabilities: Mapping[str, float]) -> tuple[str, ...]:
    """The kinds a spec may inject, in :data:`KINDS` order."""
    return tuple(k for k in KINDS if probabilities.get(k, 0.0) > 0)


def scope(max_faults: int, kinds: Sequence[str]) -> str:
    """The words a claim's scope ends with: "with <= 1 injected fault (add.busy, ...)"."""
    if max_faults <= 0 or not kinds:
        return "with no injected fault"
    s = "" if max_faults == 1 else "s"
    return f"with <= {max_faults} injected fault{s} ({', '.join(kinds)})"


class _Wrapper(BaseScheduler):
    """Delegates the Scheduler interface to the strategy running the current execution."""

    def __init__(self, inner: BaseScheduler) -> None:
        super().__init__(inner.workload_seed)
        self.inner = inner
        self.name = inner.name

    # BaseScheduler's books are the inner strategy's
    @property
    def uses_pending(self) -> bool:
        return self.inner.uses_pending

    @uses_pending.setter
    def uses_pending(self, value: bool) -> None:
        pass  # the inner strategy's

    @property
    def steps(self) -> list[int]:
        return self.inner.steps

    @steps.setter
    def steps(self, value: list[int]) -> None:
        pass  # BaseScheduler.__init__ sets it; the inner strategy keeps its own

    @property
    def total_steps(self) -> int:
        return self._done_steps + self.inner.total_steps

    @total_steps.setter
    def total_steps(self, value: int) -> None:
        pass

    _done_steps = 0

    @property
    def finder(self) -> str:
        return self.inner.finder

    def next_cpu(
        self,
        runnable: Sequence[int],
        current: int | None,
        pending: Mapping[int, Access] | None = None,
    ) -> int:
        return self.inner.next_cpu(runnable, current, pending)

    def executed(self, access: Access) -> None:
        self.inner.executed(access)

    def violated(self, step: int) -> None:
        self.inner.violated(step)

    @property
    def halts(self) -> bool:
        return self.inner.halts

    @halts.setter
    def halts(self, value: bool) -> None:
        pass  # the inner strategy's

    def follow(self, decisions: Sequence[tuple[Sequence[int], int]], cpu: int | None) -> int:
        return self.inner.follow(decisions, cpu)

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        return self.inner.lookahead(runnable, cpu, limit)

    def uniform_numbers(self, limit: int) -> list[int] | None:
        return self.inner.uniform_numbers(limit)

    def scripted_choices(self, limit: int) -> list[int] | None:
        return self.inner.scripted_choices(limit)

    def end_execution(self, outcome: str, pending: Mapping[int, Access] | None = None) -> None:
        super().end_execution(outcome, pending)
        self.inner.end_execution(outcome, pending)

    def next_u64(self) -> int:
        return self.inner.next_u64()

    def saw_fault_steps(self, steps: Sequence[tuple[int, int, int, int, bool]]) -> None:
        self.inner.saw_fault_steps(steps)

    @property
    def workload_seed(self) -> int:
        return self.inner.workload_seed

    @property
    def skipped_last(self) -> bool:
        return self.inner.skipped_last

    @property
    def distinct_schedules(self) -> int:
        return self._done_distinct + self.inner.distinct_schedules

    _done_distinct = 0


class FaultTree(_Wrapper):
    """Every plan of at most ``max_faults`` injections of ``kinds``, each searched to the end
    by a fresh inner strategy from ``factory`` (see the module docstring)."""

    wants_fault_points = True

    def __init__(
        self,
        factory: Callable[[], BaseScheduler],
        kinds: Sequence[str],
        max_faults: int = 1,
        max_executions: int | None = None,
    ) -> None:
        if not 0 <= max_faults <= MAX_FAULTS:
            raise ValueError(f"max_faults must be in [0, {MAX_FAULTS}], not {max_faults}")
        unknown = [k for k in kinds if k not in KIND_INDEX]
        if unknown:
            raise ValueError(f"unknown fault kind {unknown[0]!r}; use {', '.join(KINDS)}")
        self._factory = factory
        super().__init__(factory())
        self.kinds = tuple(k for k in KINDS if k in kinds)
        self._allowed = frozenset(KIND_INDEX[k] for k in self.kinds)
        self.max_faults = max_faults if self._allowed else 0
        self.max_executions = max_executions
        self.plan: Plan = ()
        self._queue: deque[Plan] = deque()
        self._queued: set[Plan] = {()}
        #: plans searched to the end, by size; the no-fault tree is size 0
        self.plans_done: dict[int, int] = {}
        #: executions under each plan size
        self.runs_by_size: dict[int, int] = {}
        self._claims: list[Claim] = []
        self._no_fault_coverage = ""
        self.exhausted = False
        #: some execution passed a fault point of a kind this search injects
        self.reached = False

    @property
    def fault_plan(self) -> Plan:
        return self.plan

    def board_faults(self) -> BoardPlan:
        return board_plan(self.plan)

    def saw_faults(self, points: Mapping[int, Sequence[int]]) -> None:
        """The fault points (kind per point, in order) each CPU reached in the execution
        that just ended: queue the plans one injection larger."""
        if not self.reached:
            self.reached = any(k in self._allowed for kinds in points.values() for k in kinds)
        if len(self.plan) >= self.max_faults:
            return
        taken = {(i.cpu, i.point) for i in self.plan}
        for cpu, kinds in points.items():
            for point, kind in enumerate(kinds):
                if kind in self._allowed and (cpu, point) not in taken:
                    plan = tuple(sorted((*self.plan, Injection(cpu, point, kind))))
                    if plan not in self._queued:
                        self._queued.add(plan)
                        self._queue.append(plan)

    def _start(self) -> bool:
        if self.exhausted:
            return False
        if self.max_executions is not None and self.executions >= self.max_executions:
            return False
        while not self.inner.new_execution():
            size = len(self.plan)
            if not size:
                self._no_fault_coverage = self.inner.coverage()
            self.plans_done[size] = self.plans_done.get(size, 0) + 1
            self._claims.append(self.inner.claim)
            if not self._queue:
                self.exhausted = True
                return False
            self._done_steps += self.inner.total_steps
            self._done_distinct += self.inner.distinct_schedules
            self.plan = self._queue.popleft()
            self.inner = self._factory()
        size = len(self.plan)
        self.runs_by_size[size] = self.runs_by_size.get(size, 0) + 1
        return True

    def _seed_for(self, execution: int) -> int:
        return self.inner.workload_seed

    @property
    def no_fault_done(self) -> bool:
        """The search without faults is complete."""
        return self.exhausted or bool(self.plan)

    @property
    def claim(self) -> Claim:
        if not self.exhausted:
            return "sampled"
        return "bounded" if "bounded" in self._claims else "verified"

    @property
    def claim_scopes(self) -> tuple[tuple[str, Claim], ...]:
        """The claim per scope: (no faults, its claim), (<= K faults, its claim)."""
        base: Claim = "sampled"
        if self.no_fault_done:
            base = self._claims[0] if self._claims else self.inner.claim
        out: list[tuple[str, Claim]] = [(scope(0, ()), base)]
        if self.max_faults:
            out.append((scope(self.max_faults, self.kinds), self.claim))
        return tuple(out)

    def coverage(self) -> str:
        inner = self.inner.coverage()
        if not self.max_faults:
            return inner
        if self._no_fault_coverage:
            inner = (
                f"no-fault tree: {self._no_fault_coverage}; {self.executions} executions "
                "in all, the plans' included"
            )
        done = sum(self.plans_done.values()) - (1 if self.no_fault_done else 0)
        if self.exhausted:
            state = f"all {done} plans searched to the end"
        elif not self.no_fault_done:
            state = f"the no-fault tree not finished, {len(self._queue)} plans found so far"
        else:
            state = f"{done} plans searched to the end, {len(self._queue) + 1} not finished"
        claims = ", ".join(f"{c} {n}" for c, n in self.claim_scopes)
        return f"{inner}; faults {scope(self.max_faults, self.kinds)}: {state} ({claims})"


class FaultDraw(_Wrapper):
    """A sampling strategy whose executions get faults drawn with ``probabilities``
    (kind -> probability per fault point) on a ``share`` of its executions."""

    wants_fault_points = True

    def __init__(
        self,
        inner: BaseScheduler,
        probabilities: Mapping[str, float],
        max_faults: int = 1,
        share: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not 0 <= max_faults <= MAX_FAULTS:
            raise ValueError(f"max_faults must be in [0, {MAX_FAULTS}], not {max_faults}")
        super().__init__(inner)
        self._p = {KIND_INDEX[k]: p for k, p in probabilities.items() if p > 0}
        self.kinds = kinds_of(probabilities)
        self.max_faults = max_faults
        self.share = share
        self._rng = SplitMix64(seed ^ 0xFA017)
        self._points: dict[int, int] = {}  # most fault points seen per CPU
        self._kinds_at: dict[tuple[int, int], int] = {}  # kinds seen at each (cpu, point)
        self._cpus = 0
        self.plan_board: BoardPlan = {}
        self.faulted = 0  # executions that had a plan
        #: some execution passed a fault point of a kind this search injects
        self.reached = False

    def board_faults(self) -> BoardPlan:
        return self.plan_board

    def saw_faults(self, points: Mapping[int, Sequence[int]]) -> None:
        if not self.reached:
            self.reached = any(k in self._p for kinds in points.values() for k in kinds)
        for cpu, kinds in points.items():
            self._cpus = max(self._cpus, cpu + 1)
            self._points[cpu] = max(self._points.get(cpu, 0), len(kinds))
            for point, kind in enumerate(kinds):
                key = (cpu, point)
                self._kinds_at[key] = self._kinds_at.get(key, 0) | 1 << kind

    def _start(self) -> bool:
        if not self.inner.new_execution():
            return False
        self.plan_board = {}
        if self._p and self.max_faults and self._rng.next_u64() < self.share * 2.0**64:
            self._draw()
        return True

    def _draw(self) -> None:
        """One number per (cpu, point): injected when below the point's kind's probability
        (a point has one kind). At most ``max_faults`` are kept (those with the smallest
        numbers). The points are those executions so far reached: the first execution
        runs without faults and shows them."""
        left = self.max_faults
        top = max(self._p.values())
        drawn: list[tuple[float, int, int, int]] = []
        for cpu in range(self._cpus):
            for point in range(self._points.get(cpu, 0)):
                r = self._rng.next_u64() / 2.0**64
                if r < top:
                    mask = sum(1 << k for k, p in self._p.items() if r < p)
                    # A candidate only where such a kind was seen: one that cannot fire
                    # must not take the place of one that can.
                    if mask & self._kinds_at.get((cpu, point), 0):
                        drawn.append((r, cpu, point, mask))
        # At most max_faults candidates, chosen at random among those drawn.
        for _, cpu, point, mask in sorted(drawn)[:left]:
            self.plan_board.setdefault(cpu, []).append((point, mask))
        if self.plan_board:
            self.faulted += 1

    def _seed_for(self, execution: int) -> int:
        return self.inner.workload_seed

    @property
    def claim(self) -> Claim:
        return "sampled"

    def coverage(self) -> str:
        return (
            f"{self.inner.coverage()}; faults {scope(self.max_faults, self.kinds)} "
            f"drawn on {self.faulted} of {self.executions} executions"
        )
