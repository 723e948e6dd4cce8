"""Budgeted grants: a CPU that runs on without a hand-off changes the cost, never the run.

The controller may let a CPU take several steps per grant when the strategy
is bound to choose it anyway, and replays those decisions to the strategy
afterwards. These tests run the same strategies with every step a hand-off
and with budgets, on the same processes, and require the very same
executions: steps, trace, violations and the steps they surfaced at, outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from shmpamt.config import Scenario
from shmpamt.explorer.session import Session
from shmpamt.records.execution import DEADLOCK, SLEEP_BLOCKED, STEP_LIMIT, Execution
from shmpamt.schedulers.base import Access, BaseScheduler, SleepBlocked
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.registry import make_scheduler

STRATEGIES = ["random", "pct", "pos", "dfs", "dpor", "portfolio"]
Fingerprint = tuple[object, ...]


def _fingerprint(ex: Execution) -> Fingerprint:
    trace = tuple((e.cpu, e.op, e.target, e.before, e.after, e.result) for e in ex.trace)
    named = tuple((v.name, v.cpu, v.range) for v in ex.violations)
    return (tuple(ex.steps), ex.outcome, named, tuple(ex.violation_steps),
            tuple(ex.runnable_after), trace, ex.faults)  # fmt: skip


def _run(session: Session, scheduler: BaseScheduler, batch: bool) -> list[Fingerprint]:
    session.batch = batch
    out = []
    while scheduler.new_execution():
        out.append(_fingerprint(session.execute(scheduler)))
    return out


@pytest.fixture(scope="module", params=["kai", "locked"])
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    with Session(Scenario(request.param)) as s:
        yield s


def _make(strategy: str, executions: int) -> BaseScheduler:
    preemptions = 2 if strategy == "dfs" else None
    return make_scheduler(strategy, seed=5, depth=3, preemptions=preemptions,
                          max_executions=executions, shard=(0, 1))  # fmt: skip


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budgets_change_no_execution(session: Session, strategy: str) -> None:
    handoffs = session.handoffs
    batched = _run(session, _make(strategy, 40), batch=True)
    steps = sum(len(f[0]) for f in batched)  # type: ignore[arg-type]
    saved = steps - (session.handoffs - handoffs)
    stepwise = _run(session, _make(strategy, 40), batch=False)
    assert len(batched) == 40
    # Invariant: the runs are the same; only the number of hand-offs differs.
    for i, (a, b) in enumerate(zip(batched, stepwise, strict=True)):
        assert a == b, f"execution {i} differs"
    assert saved > 0, "no step ran without a hand-off: budgets were never used"


KEEPS_LOCK = f"{Path(__file__).parent / 'report_variants.py'}:PutKeepsLock"


@pytest.mark.parametrize("strategy", ["random", "portfolio"])
@pytest.mark.parametrize(
    ("variant", "max_steps", "outcome"),
    [(KEEPS_LOCK, None, DEADLOCK), ("locked", 23, STEP_LIMIT)],
    ids=["deadlock", "step-limit"],
)
def test_streams_end_where_single_steps_do(
    strategy: str, variant: str, max_steps: int | None, outcome: str
) -> None:
    """The CPUs' own decisions stop where the controller's would: nobody can run
    (a CPU waits for the lock another kept, or for its own), or the step limit."""
    with Session(Scenario(variant)) as s:
        if max_steps is not None:
            s.max_steps = max_steps
        handoffs = s.handoffs
        batched = _run(s, _make(strategy, 30), batch=True)
        streamed = sum(len(f[0]) for f in batched) - (s.handoffs - handoffs)  # type: ignore[arg-type]
        stepwise = _run(s, _make(strategy, 30), batch=False)
    # Invariant: the runs are the same, however the decisions were made.
    for i, (a, b) in enumerate(zip(batched, stepwise, strict=True)):
        assert a == b, f"execution {i} differs"
    assert any(f[1] == outcome for f in batched), f"no execution ended in {outcome}"
    assert streamed > 0


class _StopsMidRun(RandomWalk):
    """Abandons an execution at a decision inside a run of forced steps, as DPOR does
    when the only runnable CPU sleeps."""

    uses_pending = True

    def __init__(self) -> None:
        super().__init__(seed=3, max_executions=30)
        self._streak = 0

    def _decide(
        self, runnable: Sequence[int], current: int | None, pending: Mapping[int, Access] | None
    ) -> int:
        assert pending is not None
        forced = len(runnable) == 1 and current == runnable[0]
        self._streak = self._streak + 1 if forced else 0
        if self._streak == 3:
            raise SleepBlocked("test: stop inside a run")
        return super()._decide(runnable, current, pending)

    def _start(self) -> bool:
        self._streak = 0
        return super()._start()


def test_a_search_that_stops_mid_run_discards_what_the_cpu_ran_past_it(
    session: Session,
) -> None:
    discarded = session.discarded
    batched = _run(session, _StopsMidRun(), batch=True)
    assert session.discarded > discarded, "no run was cut short: the test tests nothing"
    stepwise = _run(session, _StopsMidRun(), batch=False)
    assert batched == stepwise
    assert any(f[1] == SLEEP_BLOCKED for f in batched)


def _run_scripted(session: Session, scheduler: BaseScheduler, scripts: bool) -> list[Fingerprint]:
    session.scripts = scripts
    try:
        return _run(session, scheduler, batch=True)
    finally:
        session.scripts = True


def _scripted_granted_stepwise(
    session: Session, make: Callable[[], BaseScheduler]
) -> list[Fingerprint]:
    """The same strategy's executions as scripted streams, with one grant per CPU
    switch, and with one hand-off per step: they must be the same."""
    wakeups = session.wakeups
    scripted = _run_scripted(session, make(), scripts=True)
    scripted_wakeups = session.wakeups - wakeups
    wakeups = session.wakeups
    granted = _run_scripted(session, make(), scripts=False)
    granted_wakeups = session.wakeups - wakeups
    stepwise = _run(session, make(), batch=False)
    # Invariant: the runs are the same; only who grants the steps differs.
    for i, (a, b, c) in enumerate(zip(scripted, granted, stepwise, strict=True)):
        assert a == b == c, f"execution {i} differs"
    assert scripted_wakeups < granted_wakeups, "no prefix ran as a scripted stream"
    return scripted


def test_scripted_streams_change_no_execution(session: Session) -> None:
    """DPOR's replayed prefixes, granted by the CPUs to each other (a scripted stream)."""
    runs = _scripted_granted_stepwise(
        session, lambda: make_scheduler("dpor", seed=5, max_executions=60)
    )
    assert len(runs) == 60


def test_scripted_streams_apply_the_fault_plan() -> None:
    """With faults as choices the CPUs apply each plan inside the streams too."""
    faults = {"add.busy": 1.0, "alloc.fail": 1.0}
    with Session(Scenario("locked", rounds=1)) as s:
        runs = _scripted_granted_stepwise(
            s, lambda: make_scheduler("dpor", seed=5, max_executions=120, faults=faults)
        )
    injected = [f for f in runs if f[-1]]
    assert injected, "no execution had a fault injected: the test tests nothing"


class _ScriptsCpu1(RandomWalk):
    """Scripts cpu 1 for every next decision and picks it whenever it can run: the
    script is kept only while cpu 1 can run, so streams stop where it cannot."""

    uses_pending = True

    def __init__(self) -> None:
        super().__init__(seed=2, max_executions=20)

    def _decide(
        self, runnable: Sequence[int], current: int | None, pending: Mapping[int, Access] | None
    ) -> int:
        assert pending is not None
        return 1 if 1 in runnable else min(runnable)

    def scripted_choices(self, limit: int) -> list[int] | None:
        return [1] * limit


def test_a_scripted_cpu_that_cannot_run_hands_back_to_the_controller(session: Session) -> None:
    scripted = _run_scripted(session, _ScriptsCpu1(), scripts=True)
    stepwise = _run(session, _ScriptsCpu1(), batch=False)
    assert scripted == stepwise
    # cpu 1 finishes (or waits for the lock) before cpu 0 in every execution: the
    # streams stopped at a scripted cpu 1 that could not run, and cpu 0 went on.
    assert all(0 in f[0][f[0].index(1) :] for f in scripted)  # type: ignore[attr-defined]
