"""What a run found, as typed records: the engine builds them, reports and the API read them.

A result never overstates: ``clean`` means nothing at all was seen (no
violation, ignored or not, and no incident); kinds the caller chose to ignore
are still counted and reported as ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from shmpamt.records.estimate import TreeEstimate
from shmpamt.records.execution import Execution
from shmpamt.records.violations import VIOLATIONS, Violation

STRESS: Final = "stress"
EXPLORE: Final = "explore"
REPLAY: Final = "replay"

#: what an exploration showed (issue: "say exactly what was shown")
VERIFIED: Final = "verified"  # an exhaustive search finished: every class explored
BOUNDED: Final = "bounded"  # exhaustive up to a preemption bound
SAMPLED: Final = "sampled"  # a sample of schedules, with the strategy's guarantee
REPLAYED: Final = "replayed"


@dataclass(frozen=True)
class Finding:
    """The first execution that showed one violation kind, as it is reported."""

    kind: str
    #: the schedule reported (minimised when minimisation ran), replayable
    schedule: str
    #: the schedule as the search first found it
    found: str
    steps: int
    preemptions: int
    #: the strategy (or portfolio member) that found it
    strategy: str
    #: executions that showed this kind
    executions: int = 1
    #: the reported schedule's execution, for timelines (not part of equality or JSON)
    execution: Execution | None = field(default=None, compare=False, repr=False)

    @property
    def replay_command(self) -> str:
        return f"shmpamt replay {self.schedule}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "schedule": self.schedule,
            "replay": self.replay_command,
            "found": self.found,
            "steps": self.steps,
            "preemptions": self.preemptions,
            "strategy": self.strategy,
            "executions": self.executions,
        }


@dataclass(frozen=True)
class Regression:
    """One stored failing schedule replayed before a search (the failure database)."""

    kind: str
    schedule: str
    #: the replay still shows ``kind``
    still_fails: bool
    #: why the replay could not run as recorded ("" when it ran)
    note: str = ""
    #: steps the replayed execution took
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "schedule": self.schedule,
            "still_fails": self.still_fails,
            "note": self.note,
            "steps": self.steps,
        }


def regression_line(regressions: tuple[Regression, ...]) -> str:
    """The report's one line on the regression check, said before any search finding."""
    bad = sum(1 for r in regressions if r.still_fails)
    return f"regressions: {len(regressions)} stored schedules replayed, {bad} still fail"


@dataclass(frozen=True)
class ExploreStats:
    strategy: str
    executions: int
    distinct_schedules: int
    steps_total: int
    #: VERIFIED, BOUNDED, SAMPLED or REPLAYED
    claim: str
    #: executions whose only violations were of ignored kinds
    ignored_only: int = 0
    #: an exhaustive search's progress (dpor), None for the others
    estimate: TreeEstimate | None = None
    #: what the claim rests on besides the search itself: symmetry, dependence rules
    reductions: tuple[str, ...] = ()


@dataclass(frozen=True)
class WindowCoverage:
    """Which cross-CPU windows free-running stress hit (see shmpamt/machine/coverage.py)."""

    #: distinct (X1, X2) windows: consecutive primitives of one CPU on one slot
    seen: int
    #: of those, windows another CPU's primitive on the same slot landed in
    hit: int
    #: distinct (X1, X2, Y): Y by another CPU between X1 and X2
    interleavings: int
    #: delays targeted chaos inserted (0 for uniform chaos, which does not count them)
    delays: int = 0

    def __str__(self) -> str:
        return f"windows hit {self.hit}/{self.seen}, {self.interleavings} interleavings"

    def to_dict(self) -> dict[str, int]:
        return {
            "windows_seen": self.seen,
            "windows_hit": self.hit,
            "interleavings": self.interleavings,
            "delays": self.delays,
        }


@dataclass(frozen=True)
class VariantResult:
    variant: str
    mode: str  # STRESS, EXPLORE or REPLAY
    seed: int
    cpus: int
    #: get/put rounds (stress) or executions (explore, replay)
    operations: int
    elapsed_s: float
    #: every violation name, zero or not
    counts: dict[str, int]
    examples: dict[str, Violation]
    incidents: tuple[str, ...] = ()
    faults_injected: int = 0
    quiescence_checked: bool = True
    ignored: frozenset[str] = frozenset()
    findings: tuple[Finding, ...] = ()
    coverage: str = ""
    kernel_warnings: int = 0
    explore: ExploreStats | None = None
    #: the spec the variant was loaded from (a name, or path/file.py:Class)
    spec: str = ""
    #: things the reader should know that are neither violations nor incidents
    notes: tuple[str, ...] = ()
    #: stored failures replayed before the search; None when no database was used
    regressions: tuple[Regression, ...] | None = None
    #: cross-CPU windows targeted chaos hit (free-running stress with targeted chaos only)
    windows: WindowCoverage | None = None
    #: the execution a timeline shows: the first failing one, or a replay's (not in JSON)
    shown: Execution | None = field(default=None, compare=False, repr=False)

    @property
    def found(self) -> dict[str, int]:
        """Every kind seen, ignored or not, with its count."""
        return {k: v for k, v in self.counts.items() if v}

    @property
    def failing(self) -> dict[str, int]:
        """The kinds seen that the caller did not ignore."""
        return {k: v for k, v in self.found.items() if k not in self.ignored}

    @property
    def ignored_seen(self) -> dict[str, int]:
        return {k: v for k, v in self.found.items() if k in self.ignored}

    @property
    def clean(self) -> bool:
        """Nothing at all was seen: no violation (ignored or not) and no incident."""
        return not self.found and not self.incidents

    @property
    def ok(self) -> bool:
        """No violation outside ``ignored`` and no incident."""
        return not self.failing and not self.incidents

    @property
    def verdict(self) -> str:
        return verdict_word(bool(self.failing), bool(self.incidents), bool(self.found))

    @property
    def schedules(self) -> tuple[str, ...]:
        return tuple(f.schedule for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "variant": self.variant,
            "mode": self.mode,
            "seed": self.seed,
            "cpus": self.cpus,
            "operations": self.operations,
            "elapsed_s": round(self.elapsed_s, 3),
            "result": self.verdict,
            "verdict": sorted(self.failing),
            "ignored": sorted(self.ignored),
            "ignored_seen": dict(sorted(self.ignored_seen.items())),
            "violations": {
                name: {"count": n, "example": self.examples[name].to_dict()}
                if name in self.examples
                else {"count": n}
                for name, n in self.found.items()
            },
            "faults_injected": self.faults_injected,
            "quiescence_checked": self.quiescence_checked,
            "incidents": list(self.incidents),
            "schedules": [f.to_dict() for f in self.findings],
            "coverage": self.coverage,
            "kernel_warnings": self.kernel_warnings,
            "notes": list(self.notes),
            "window_coverage": self.windows.to_dict() if self.windows is not None else None,
        }
        if self.regressions is not None:
            d["regressions"] = {
                "replayed": len(self.regressions),
                "still_failing": sum(1 for r in self.regressions if r.still_fails),
                "schedules": [r.to_dict() for r in self.regressions],
            }
        if self.explore is not None:
            e = self.explore
            d.update(
                strategy=e.strategy,
                executions=e.executions,
                distinct_schedules=e.distinct_schedules,
                steps_total=e.steps_total,
                claim=e.claim,
                ignored_only_executions=e.ignored_only,
                estimate=e.estimate.to_dict() if e.estimate is not None else None,
                reductions=list(e.reductions),
            )
        return d


def verdict_word(failing: bool, incidents: bool, seen: bool) -> str:
    """One word: clean, violations, incident, or ignored (only ignored kinds were seen)."""
    if failing:
        return "violations"
    if incidents:
        return "incident"
    return "ignored" if seen else "clean"


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(VIOLATIONS, 0)


def first_examples(records: list[Violation]) -> dict[str, Violation]:
    out: dict[str, Violation] = {}
    for v in records:
        out.setdefault(v.name, v)
    return out
