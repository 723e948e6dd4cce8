"""The regression check: replay stored failing schedules before a search, and fold the
ones that still fail into the search's result.

Replaying is deterministic and costs an execution's steps, so the stored
failures of a variant are re-checked in milliseconds (after one process
start-up per scenario) before any new search: a fix that did not fix, or a
change that brought a race back, is reported first.

The database is untrusted input: a search replays only the entries whose
schedule names the variant under test itself (the same spec and, for a file,
the same source hash), so an entry can neither blame one variant for another's
failure nor make the rig import a file the user did not name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from shmpamt.config import Scenario, check_variant, source_hash
from shmpamt.errors import ScheduleError, SchedulingError, UsageError
from shmpamt.explorer.session import Session
from shmpamt.machine.placement import core_for
from shmpamt.records.execution import Execution
from shmpamt.records.faildb import FailureDB
from shmpamt.records.results import Finding, Regression, VariantResult
from shmpamt.records.schedule_string import Schedule


@dataclass(frozen=True)
class Stored:
    """A schedule to re-check and the kind it was stored for."""

    kind: str
    schedule: str
    strategy: str = ""


def select_stored(
    db: FailureDB, variant: str, ignore: frozenset[str] = frozenset()
) -> tuple[list[Stored], list[str], list[str]]:
    """What a search of ``variant`` replays from ``db``: the stored schedules (not of an
    ignored kind), their entries' keys, and one warning per file skipped.
    Raises DatabaseError when the database cannot be read."""
    spec = check_variant(variant)
    entries, warnings = db.replayable(spec, source_hash(spec))
    kept = [e for e in entries if e.kind not in ignore]
    return [Stored(e.kind, e.schedule, e.strategy) for e in kept], [e.key for e in kept], warnings


def replay_stored(
    stored: Sequence[Stored],
    should_stop: Callable[[], bool] = lambda: False,
    variant: str | None = None,
) -> tuple[list[Regression], dict[str, tuple[Stored, Execution]]]:
    """Replay each stored schedule once, one Session per scenario.

    ``variant``: the variant under test; a schedule of any other variant, or of
    another version of its file, is not replayed (nothing it names is loaded).
    Returns every replay's outcome and, per kind, the first stored schedule that
    still shows it with its execution.
    """
    spec = check_variant(variant) if variant is not None else ""
    want = (spec, source_hash(spec))
    groups: dict[Scenario, list[tuple[Stored, Schedule]]] = {}
    out: list[Regression] = []
    for st in stored:
        try:
            s = Schedule.parse(st.schedule)
            if spec and (s.variant, s.source) != want:
                out.append(Regression(st.kind, st.schedule, False, f"not replayed: not {spec}"))
                continue
            groups.setdefault(Scenario.of(s), []).append((st, s))
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
