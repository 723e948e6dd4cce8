"""The search loop: executions of one :class:`~shmpamt.explorer.session.Session` until
the time, the executions or the strategy run out; each violation kind kept with the
first execution that showed it, shrunk, and folded into one result.

Also replay: one schedule string, ``times`` times, optionally shrunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from shmpamt.config import ExploreConfig, ReplayConfig
from shmpamt.errors import SchedulingError, UsageError
from shmpamt.explorer.minimize import minimize
from shmpamt.explorer.session import Session, StartAborted
from shmpamt.explorer.symmetry import symmetry_for
from shmpamt.machine.placement import core_for
from shmpamt.records.estimate import TreeEstimate
from shmpamt.records.execution import STEP_LIMIT, Execution
from shmpamt.records.results import (
    EXPLORE,
    REPLAY,
    REPLAYED,
    ExploreStats,
    Finding,
    VariantResult,
    first_examples,
    zero_counts,
)
from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.base import ScheduleMismatch, Scheduler
from shmpamt.schedulers.dpor import DPOR, HALT_RULE
from shmpamt.schedulers.registry import claim_of, make_scheduler
from shmpamt.variants.registry import load_variant

MINIMIZE_CHECKS: Final = 300  # replays per reported kind


@dataclass(frozen=True)
class ExploreProgress:
    executions: int
    distinct: int
    #: violation kinds found so far (not ignored)
    kinds: int
    elapsed: float
    budget: float
    #: an exhaustive search's share explored and what it implies (dpor only)
    estimate: TreeEstimate | None = None


@dataclass
class _Kind:
    """The first execution that showed a kind, and how many executions showed it."""

    schedule: Schedule
    execution: Execution
    executions: int = 1
    reported: Schedule | None = None
    reported_execution: Execution | None = None


@dataclass
class _Search:
    kinds: dict[str, _Kind] = field(default_factory=dict)
    ignored_only: int = 0
    incidents: list[str] = field(default_factory=list)


def shrink(session: Session, schedule: Schedule, kind: str) -> tuple[Schedule, Execution]:
    """The smallest schedule found that still shows ``kind``, and its execution."""

    def still_fails(candidate: Schedule) -> bool:
        try:
            ex = session.replay(candidate)
        except SchedulingError:
            return False  # infeasible: a recorded CPU was not runnable
        return kind in ex.kinds

    small = minimize(schedule, still_fails, MINIMIZE_CHECKS)
    return small, session.replay(small)


def run_explore(
    config: ExploreConfig,
    on_progress: Callable[[ExploreProgress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    shard: tuple[int, int] = (0, 1),
    core: int | None = None,
) -> VariantResult:
    """One explorer: search until the budget, the executions, or the strategy is exhausted.

    Every violation kind found is kept with the first execution that showed it;
    with ``first`` (not the default) the search ends at the first failing one.
    ``shard`` is this explorer's part of a ``--jobs`` search, ``core`` its core.
    """
    scenario = config.scenario
    symmetry = symmetry_for(config)
    scheduler = make_scheduler(
        config.strategy,
        seed=config.seed,
        depth=config.depth,
        preemptions=config.preemptions,
        max_executions=config.executions,
        shard=shard,
        faults=config.fault_probabilities,
        max_faults=config.max_faults,
        fault_share=config.fault_share,
        symmetry=symmetry,
        halt_at_violation=config.halt_at_violation,
    )
    found = _Search()
    reductions: tuple[str, ...] = (symmetry.describe(),) if symmetry and symmetry.reduces else ()
    if config.halt_at_violation:
        reductions += (HALT_RULE,)
    rules: tuple[str, ...] = ()
    try:
        session = Session(scenario, core, should_stop=should_stop)
    except StartAborted:  # a Ctrl-C while its processes started: nothing ran
        name, ran, elapsed = load_variant(config.variant).name or config.variant, 0, 0.0
    else:
        session.halt_ignores = config.ignore  # an ignored kind does not end the search
        with session:
            ran, elapsed = _search(session, config, scheduler, found, on_progress, should_stop)
            name = session.variant_name
            if session.used_footprints:
                rules = session.footprints.reductions
        # Closing the session stopped whatever the CPUs started and left running.
        found.incidents.extend(session.fleet.incidents)
    # Faults asked for by name that no execution could inject: say so, not "clean".
    # (A job without the fault search, a sharded DPOR's second, has no `reached`.)
    asked = config.faults not in ("default", "none") and config.fault_probabilities
    if ran and asked and not getattr(scheduler, "reached", True):
        found.incidents.append(
            f"--faults {config.faults}: no execution reached a fault point of those "
            "kinds, so none was injected"
        )
    if ran == 0 and should_stop():
        # Stopped before its first execution (a Ctrl-C during start-up): no evidence of
        # clean. (Without a stop, zero executions is a shard with nothing to do.)
        found.incidents.append("stopped before any execution ran: nothing was tested")
    counts = zero_counts()
    examples = {}
    findings = []
    for kind, k in found.kinds.items():
        counts[kind] = k.executions
        ex = k.reported_execution or k.execution
        examples[kind] = next(v for v in k.execution.violations if v.name == kind)
        reported = k.reported or k.schedule
        findings.append(
            Finding(
                kind=kind,
                schedule=reported.encode(),
                found=k.schedule.encode(),
                steps=len(ex.steps),
                preemptions=ex.preemptions(),
                strategy=k.execution.strategy,
                executions=k.executions,
                execution=ex,
            )
        )
    ordered = sorted(findings, key=lambda f: (f.kind in config.ignore, f.kind))
    return VariantResult(
        variant=name,
        mode=EXPLORE,
        seed=config.seed,
        cpus=scenario.cpus,
        operations=ran,
        elapsed_s=elapsed,
        counts=counts,
        examples=examples,
        incidents=tuple(found.incidents),
        ignored=config.ignore,
        findings=tuple(ordered),
        coverage=scheduler.coverage() + "".join(f"; with {r}" for r in rules),
        spec=config.variant,
        shown=next((f.execution for f in ordered if f.kind not in config.ignore), None),
        explore=ExploreStats(
            strategy=config.strategy,
            executions=ran,
            distinct_schedules=_distinct(scheduler),
            steps_total=scheduler.total_steps,
            claim=claim_of(scheduler),
            ignored_only=found.ignored_only,
            estimate=tree_estimate(scheduler, ran, elapsed),
            reductions=reductions + rules,
        ),
    )


def _search(
    session: Session,
    config: ExploreConfig,
    scheduler: Scheduler,
    found: _Search,
    on_progress: Callable[[ExploreProgress], None] | None,
    should_stop: Callable[[], bool],
) -> tuple[int, float]:
    """The search loop on a started session; (executions run, seconds searched)."""
    scenario = config.scenario
    budget = config.seconds
    ran = 0
    last_tick = 0.0
    # The budget is search time: starting the processes does not count against it.
    t0 = time.monotonic()
    while not should_stop():
        elapsed = time.monotonic() - t0
        if budget and elapsed >= budget:
            break
        if not scheduler.new_execution():
            break
        ex = session.execute(scheduler)
        ran += 1
        if scheduler.skipped_last:
            continue  # another job owns this execution and counts what it shows
        if ex.outcome == STEP_LIMIT:
            found.incidents.append(
                f"execution {ran} hit the step limit of {session.max_steps} steps (livelock?)"
            )
        failing = ex.kinds - config.ignore
        if ex.kinds and not failing:
            found.ignored_only += 1
        for kind in ex.kinds:
            if kind in found.kinds:
                found.kinds[kind].executions += 1
            else:
                sched = scenario.schedule(ex.workload_seed, tuple(ex.steps), ex.faults)
                found.kinds[kind] = _Kind(sched, ex)
        if failing and config.first:
            break
        if on_progress is not None and elapsed - last_tick >= 0.2:
            last_tick = elapsed
            on_progress(_progress(scheduler, found, config, ran, elapsed, budget))
    for kind, k in found.kinds.items():
        if config.minimize and kind not in config.ignore:
            k.reported, k.reported_execution = shrink(session, k.schedule, kind)
    elapsed = time.monotonic() - t0
    if on_progress is not None:
        on_progress(_progress(scheduler, found, config, ran, elapsed, budget))
    return ran, elapsed


def _progress(
    scheduler: Scheduler,
    found: _Search,
    config: ExploreConfig,
    ran: int,
    elapsed: float,
    budget: float,
) -> ExploreProgress:
    return ExploreProgress(
        ran,
        _distinct(scheduler),
        _n(found, config),
        elapsed,
        budget,
        tree_estimate(scheduler, ran, elapsed),
    )


def tree_estimate(strategy: Scheduler, executions: int, elapsed: float) -> TreeEstimate | None:
    """How far an exhaustive search has got (None for sampling strategies): a query of
    DPOR itself, outside the protocol every strategy implements."""
    if not isinstance(strategy, DPOR) or executions == 0:
        return None
    return TreeEstimate.of(strategy.explored_share, executions, elapsed)


def _n(found: _Search, config: ExploreConfig) -> int:
    return len(set(found.kinds) - config.ignore)


def _distinct(scheduler: Scheduler) -> int:
    return scheduler.distinct_schedules


def run_replay(
    config: ReplayConfig, should_stop: Callable[[], bool] = lambda: False
) -> VariantResult:
    """Replay a schedule ``times`` times; every replay must agree (else an incident)."""
    schedule = config.parsed
    incidents: list[str] = []
    t0 = time.monotonic()
    with Session(config.scenario, core_for(0) if config.pin else None) as s:
        runs: list[Execution] = []
        for _ in range(config.times):
            if should_stop():
                break
            try:
                runs.append(s.replay(schedule))
            except ScheduleMismatch as e:
                raise UsageError(f"schedule does not fit {schedule.variant}: {e}") from None
        outcomes = {(r.first_violation(), r.kinds) for r in runs}
        if len(outcomes) > 1:
            incidents.append(f"replays disagree: {sorted(map(str, outcomes))} (nondeterminism)")
        shown, ex = schedule, runs[-1] if runs else None
        if ex is not None and config.minimize and ex.failed:
            kind = ex.violations[0].name
            shown, ex = shrink(s, schedule, kind)
        name = s.variant_name
    counts = zero_counts()
    findings: list[Finding] = []
    examples = {}
    if ex is not None:
        for v in ex.violations:
            counts[v.name] += 1
        examples = first_examples(ex.violations)
        for kind in sorted(ex.kinds):
            findings.append(
                Finding(
                    kind=kind,
                    schedule=shown.encode(),
                    found=schedule.encode(),
                    steps=len(ex.steps),
                    preemptions=ex.preemptions(),
                    strategy="replay",
                    execution=ex,
                )
            )
    return VariantResult(
        variant=name,
        mode=REPLAY,
        seed=schedule.seed,
        cpus=schedule.cpus,
        operations=len(runs),
        elapsed_s=time.monotonic() - t0,
        counts=counts,
        examples=examples,
        incidents=tuple(incidents),
        findings=tuple(findings),
        coverage=f"replayed {len(runs)}x" + (f", {len(ex.steps)} steps" if ex else ""),
        explore=ExploreStats("replay", len(runs), 1, len(ex.steps) if ex else 0, REPLAYED),
        spec=schedule.variant,
        shown=ex,
        notes=tuple(n for n in (config.source_changed(),) if n),
    )
