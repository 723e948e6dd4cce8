"""A live system for controlled executions: module daemon + N parked CPU processes.

Spawning processes costs far more than an execution, so a ``Session`` keeps
its CPUs alive and only resets shared state between executions. ``explore``,
``replay`` and minimisation are all loops of ``Session.execute``.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Final

from shmpamt.cpu import Workload, cpu_explore_main
from shmpamt.invariants import VIOLATIONS, Violation
from shmpamt.ipc import new_token, sigint_ignored_in_children
from shmpamt.module.faults import FaultPlan
from shmpamt.report import VariantResult, first_examples
from shmpamt.schedule import Schedule
from shmpamt.schedulers.base import Scheduler, SchedulingError
from shmpamt.scheduling import Execution, Explorer, SchedBoard
from shmpamt.system import System, SystemConfig

DEFAULT_MAX_STEPS: Final = 5000
STRATEGIES: Final = ("random", "pct", "dfs")


@dataclass(frozen=True)
class Scenario:
    """The small world an exploration runs in; recorded in every schedule string."""

    variant: str
    cpus: int = 2
    rounds: int = 2
    ranges: int = 1
    pages_per_range: int = 0  # 0 = one page slot per CPU

    @property
    def pages(self) -> int:
        return self.pages_per_range or self.cpus

    def validate(self) -> None:
        if not 1 <= self.cpus <= 8:
            raise ValueError("explore: --cpus must be within 1..8 (schedules grow fast)")
        if not 1 <= self.rounds <= 100:
            raise ValueError("explore: --rounds must be within 1..100")
        if not 1 <= self.ranges <= 64:
            raise ValueError("explore: --ranges must be within 1..64")
        Workload(ranges=self.ranges, pages_per_range=self.pages).validate(self.cpus)

    def schedule(self, seed: int, steps: tuple[int, ...]) -> Schedule:
        return Schedule(
            variant=self.variant,
            cpus=self.cpus,
            rounds=self.rounds,
            ranges=self.ranges,
            pages=self.pages,
            seed=seed,
            steps=steps,
        )

    @classmethod
    def of(cls, s: Schedule) -> Scenario:
        return cls(s.variant, s.cpus, s.rounds, s.ranges, s.pages)


class Session:
    """``with Session(Scenario("rfc")) as s: s.execute(scheduler)``."""

    def __init__(self, scenario: Scenario, max_steps: int = DEFAULT_MAX_STEPS) -> None:
        from shmpamt.variants.registry import load_variant

        scenario.validate()
        variant = load_variant(scenario.variant)
        self.scenario = scenario
        self.variant_name = variant.name or scenario.variant
        config = SystemConfig(
            cpus=scenario.cpus,
            ranges=scenario.ranges,
            pages_per_range=scenario.pages,
            initial_refcount=variant.initial_refcount,
        )
        workload = Workload(ranges=scenario.ranges, pages_per_range=scenario.pages, hold_us=0)
        token = new_token()
        self.board: SchedBoard | None = SchedBoard.create(scenario.cpus, token)
        self._procs: list[BaseProcess] = []
        try:
            self.system = System.start(
                config, FaultPlan.none(), token=token, extra_names=self.board.all_names()
            )
        except BaseException:
            self.board.close()
            raise
        try:
            ctx = mp.get_context("spawn")
            for c in range(scenario.cpus):
                p = ctx.Process(
                    target=cpu_explore_main,
                    args=(
                        self.system.names,
                        self.board.names,
                        c,
                        scenario.variant,
                        workload,
                        scenario.rounds,
                    ),
                    name=f"shmpamt-cpu{c}",
                    daemon=True,
                )
                with sigint_ignored_in_children():
                    p.start()
                self._procs.append(p)
            self.explorer = Explorer(self.system, self.board, self._procs, max_steps)
            self.explorer.boot()
        except BaseException:
            self.close()
            raise
        self.executions = 0

    def execute(self, scheduler: Scheduler) -> Execution:
        self.executions += 1
        return self.explorer.run(scheduler, scheduler.workload_seed)

    def close(self) -> None:
        if self.board is not None and self._procs:
            explorer = getattr(self, "explorer", None)
            if explorer is not None:
                explorer.shutdown()
            deadline = time.monotonic() + 5
            for p in self._procs:
                p.join(max(0.1, deadline - time.monotonic()))
                if p.exitcode is None:
                    p.kill()
                    p.join(5)
        self._procs = []
        if self.board is not None:
            self.board.close()
            self.board = None
        self.system.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def make_scheduler(
    strategy: str,
    seed: int,
    depth: int = 2,
    preemptions: int = 2,
    executions: int | None = None,
) -> Scheduler:
    from shmpamt.schedulers.dfs import DFS
    from shmpamt.schedulers.pct import PCT
    from shmpamt.schedulers.random_walk import RandomWalk

    if strategy == "random":
        return RandomWalk(seed=seed, max_executions=executions)
    if strategy == "pct":
        return PCT(depth=depth, seed=seed, max_executions=executions)
    if strategy == "dfs":
        return DFS(preemption_bound=preemptions, workload_seed=seed, max_executions=executions)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class ExploreProgress:
    executions: int
    distinct: int
    violations: int
    elapsed: float
    budget: float


@dataclass
class Failure:
    schedule: Schedule
    execution: Execution
    minimized: Schedule | None = None
    minimized_execution: Execution | None = None


def first_violation(ex: Execution, ignore: frozenset[str] = frozenset()) -> tuple[str, int] | None:
    """(name, step) of the first violation whose name is not ignored."""
    for v, step in zip(ex.violations, ex.violation_steps, strict=True):
        assert isinstance(v, Violation)
        if v.name not in ignore:
            return v.name, step
    return None


def replay_once(session: Session, schedule: Schedule) -> Execution:
    from shmpamt.schedulers.replay import Replay

    sched = Replay(schedule, times=1)
    sched.new_execution()
    return session.execute(sched)


def minimize_failure(
    session: Session, failure: Failure, budget: int = 300, ignore: frozenset[str] = frozenset()
) -> None:
    """Shrink a failing schedule while the same violation still happens."""
    from shmpamt.minimize import minimize

    want = first_violation(failure.execution, ignore)
    assert want is not None

    def still_fails(candidate: Schedule) -> bool:
        try:
            ex = replay_once(session, candidate)
        except SchedulingError:
            return False  # infeasible: a recorded CPU was not runnable
        got = first_violation(ex, ignore)
        return got is not None and got[0] == want[0]

    small = minimize(failure.schedule, still_fails, budget)
    failure.minimized = small
    failure.minimized_execution = replay_once(session, small)


def run_explore(
    scenario: Scenario,
    strategy: str,
    seed: int,
    *,
    depth: int = 2,
    preemptions: int = 2,
    budget: float = 20.0,
    executions: int | None = None,
    minimize: bool = True,
    ignore: frozenset[str] = frozenset(),
    on_progress: Callable[[ExploreProgress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[VariantResult, Failure | None]:
    """Explore until the first failure, the budget, or the strategy is exhausted."""
    if not budget > 0 and not executions:  # also refuses NaN
        raise ValueError("give a positive --budget or a number of --executions")
    scheduler = make_scheduler(strategy, seed, depth, preemptions, executions=executions)
    failure: Failure | None = None
    incidents: list[str] = []
    t0 = time.monotonic()
    ran = 0
    last_tick = 0.0
    with Session(scenario) as session:
        while not should_stop():
            elapsed = time.monotonic() - t0
            if budget and elapsed >= budget:
                break
            if executions is not None and ran >= executions:
                break
            if not scheduler.new_execution():
                break
            ex = session.execute(scheduler)
            ran += 1
            if ex.outcome == "step-limit":
                incidents.append(f"execution {ran} hit the step limit (livelock?)")
            if first_violation(ex, ignore) is not None:
                failure = Failure(scenario.schedule(ex.workload_seed, tuple(ex.steps)), ex)
                break
            if on_progress is not None and elapsed - last_tick >= 0.2:
                last_tick = elapsed
                on_progress(ExploreProgress(ran, _distinct(scheduler), 0, elapsed, budget))
        if failure is not None and minimize:
            minimize_failure(session, failure, ignore=ignore)
        elapsed = time.monotonic() - t0
        if on_progress is not None:
            on_progress(
                ExploreProgress(
                    ran, _distinct(scheduler), int(failure is not None), elapsed, budget
                )
            )
        name = session.variant_name
    counts = {n: 0 for n in VIOLATIONS}
    examples: dict[str, Violation] = {}
    schedules: tuple[str, ...] = ()
    if failure is not None:
        counts, examples = execution_counts(failure.execution)
        best = failure.minimized or failure.schedule
        schedules = (best.encode(),)
    result = VariantResult(
        variant=name,
        mode="explore",
        seed=seed,
        cpus=scenario.cpus,
        operations=ran,
        elapsed_s=elapsed,
        counts=counts,
        examples=examples,
        incidents=tuple(incidents),
        schedules=schedules,
        coverage=scheduler.coverage(),
        extra={
            "strategy": strategy,
            "executions": ran,
            "distinct_schedules": _distinct(scheduler),
            "steps_total": getattr(scheduler, "total_steps", 0),
        },
    )
    return result, failure


def _distinct(s: Scheduler) -> int:
    return int(getattr(s, "distinct_schedules", 0))


def execution_counts(ex: Execution) -> tuple[dict[str, int], dict[str, Violation]]:
    counts = {n: 0 for n in VIOLATIONS}
    found = [v for v in ex.violations if isinstance(v, Violation)]
    for v in found:
        counts[v.name] += 1
    return counts, first_examples(found)


def replay_results(text: str, times: int = 1) -> list[VariantResult]:
    """Replay a schedule string; raises ScheduleError/SchedulingError when it does not fit."""
    if times < 1:
        raise ValueError("times must be >= 1")
    schedule = Schedule.parse(text)
    out = []
    with Session(Scenario.of(schedule)) as s:
        for _ in range(times):
            t0 = time.monotonic()
            ex = replay_once(s, schedule)
            counts, examples = execution_counts(ex)
            out.append(
                VariantResult(
                    variant=s.variant_name,
                    mode="replay",
                    seed=schedule.seed,
                    cpus=schedule.cpus,
                    operations=1,
                    elapsed_s=time.monotonic() - t0,
                    counts=counts,
                    examples=examples,
                    schedules=(schedule.encode(),) if ex.failed else (),
                    extra={
                        "steps": len(ex.steps),
                        "outcome": ex.outcome,
                        "first_violation_step": ex.violation_steps[0] if ex.failed else None,
                    },
                )
            )
    return out
