"""The regression check: replay stored failing schedules before a search, and fold the
ones that still fail into the search's result.

Replaying is deterministic and costs an execution's steps, so the stored
failures of a variant are re-checked in milliseconds (after one process
start-up per scenario) before any new search: a fix that did not fix, or a
change that brought a race back, is reported first.

The database is untrusted input: a regression check replays every stored
schedule on the variant under test (``variant``), never on the one the
schedule names, so an entry can neither blame that variant for another's
failure nor make the rig load a file the user did not name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from shmpamt.config import Scenario
from shmpamt.errors import ScheduleError, SchedulingError, UsageError
from shmpamt.explorer.session import Session
from shmpamt.machine.placement import core_for
from shmpamt.records.execution import Execution
from shmpamt.records.results import Finding, Regression, VariantResult
from shmpamt.records.schedule_string import Schedule


@dataclass(frozen=True)
class Stored:
    """A schedule to re-check and the kind it was stored for."""

    kind: str
    schedule: str
    strategy: str = ""


def replay_stored(
    stored: Sequence[Stored],
    should_stop: Callable[[], bool] = lambda: False,
    variant: str | None = None,
) -> tuple[list[Regression], dict[str, tuple[Stored, Execution]]]:
    """Replay each stored schedule once, one Session per scenario.

    ``variant``: run them on this variant as it is now (a regression check of a
    variant file checks the file, not a copy its old hash may find); None: on the
    variant each schedule names. Returns every replay's outcome and, per kind, the
    first stored schedule that still shows it with its execution.
    """
    groups: dict[Scenario, list[tuple[Stored, Schedule]]] = {}
    out: list[Regression] = []
    for st in stored:
        try:
            s = Schedule.parse(st.schedule)
            scenario = (
                Scenario.of(s)
                if variant is None
                else Scenario(variant, s.cpus, s.rounds, s.ranges, s.pages)
            )
            groups.setdefault(scenario, []).append((st, s))
        except UsageError as e:  # ScheduleError too
            out.append(Regression(st.kind, st.schedule, False, f"cannot be replayed: {e}"))
    failing: dict[str, tuple[Stored, Execution]] = {}
    for scenario, items in groups.items():
        if should_stop():
            break
        with Session(scenario, core_for(0)) as session:
            for st, s in items:
                if should_stop():
                    break
                try:
                    ex = session.replay(s)
                except (SchedulingError, ScheduleError) as e:
                    # the variant changed under the schedule: it no longer fits
                    out.append(Regression(st.kind, st.schedule, False, f"no longer fits: {e}"))
                    continue
                still = st.kind in ex.kinds
                out.append(Regression(st.kind, st.schedule, still, steps=len(ex.steps)))
                if still:
                    failing.setdefault(st.kind, (st, ex))
    return out, failing


def fold(
    result: VariantResult,
    regressions: Sequence[Regression],
    failing: dict[str, tuple[Stored, Execution]],
) -> VariantResult:
    """The search's result with the regression check in it.

    A schedule that still fails counts as one more execution showing its kind;
    a kind the search itself did not find gets the stored schedule as its
    finding, so the verdict and the exit status say it.
    """
    counts = dict(result.counts)
    examples = dict(result.examples)
    findings = list(result.findings)
    have = {f.kind for f in findings}
    for r in regressions:
        if r.still_fails:
            counts[r.kind] = counts.get(r.kind, 0) + 1
    for kind, (st, ex) in failing.items():
        examples.setdefault(kind, next(v for v in ex.violations if v.name == kind))
        if kind not in have:
            findings.append(
                Finding(
                    kind=kind,
                    schedule=st.schedule,
                    found=st.schedule,
                    steps=len(ex.steps),
                    preemptions=ex.preemptions(),
                    strategy=f"stored ({st.strategy or 'unknown'})",
                    execution=ex,
                )
            )
    ordered = tuple(sorted(findings, key=lambda f: (f.kind in result.ignored, f.kind)))
    shown = result.shown
    if shown is None:
        shown = next((f.execution for f in ordered if f.kind not in result.ignored), None)
    return replace(
        result,
        counts=counts,
        examples=examples,
        findings=ordered,
        regressions=tuple(regressions),
        shown=shown,
    )
