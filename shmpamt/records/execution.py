"""What one controlled execution did: the CPU granted at each step, what each step
did to which object, and the violations it revealed (with the step they surfaced at).

The controller records these; minimisation, the timeline and the reports read
them. Light on purpose (no rich, no cffi), so results can carry them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, overload

from shmpamt.records.violations import Violation

#: how an execution ended
COMPLETE: Final = "complete"
DEADLOCK: Final = "deadlock"
STEP_LIMIT: Final = "step-limit"
SLEEP_BLOCKED: Final = "sleep-blocked"  # a reduction strategy cut it short: nothing new below


#: the variant's helpers a step can be inside, by their index in a call id (0: none,
#: the workload's own step, e.g. the AUG between get and put)
HELPERS: Final = ("", "tdx_pamt_get", "tdx_pamt_put")
GET: Final = 1
PUT: Final = 2


def call_id(number: int, helper: int) -> int:
    """One helper call of a CPU: its ``number`` (counted per execution) and which helper.
    Kept within 31 bits, as it crosses the board in one word."""
    return ((number & 0xFFFFFFF) << 2) | helper


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One granted step: ``op`` by ``cpu`` on ``target`` (a range index, -1 for none)."""

    step: int
    cpu: int
    op: str
    target: int
    before: int | None
    after: int | None
    result: int
    note: str = ""
    #: the get/put call the step is part of (:func:`call_id`), 0 outside both
    call: int = 0

    @property
    def helper(self) -> str:
        """``tdx_pamt_get``, ``tdx_pamt_put`` or "" (the workload's own step)."""
        return HELPERS[self.call & 3]


class LazyTrace(Sequence[TraceEvent]):
    """A trace built on first use: a search runs thousands of executions per second
    and shows a handful, so the controller keeps compact records and this builds the
    events only for the ones someone reads."""

    def __init__(self, build: Callable[[], list[TraceEvent]]) -> None:
        self._build: Callable[[], list[TraceEvent]] | None = build
        self._events: list[TraceEvent] = []

    def _all(self) -> list[TraceEvent]:
        if self._build is not None:
            self._events = self._build()
            self._build = None
        return self._events

    @overload
    def __getitem__(self, i: int) -> TraceEvent: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[TraceEvent]: ...
    def __getitem__(self, i: int | slice) -> TraceEvent | Sequence[TraceEvent]:
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())


@dataclass
class Execution:
    steps: list[int]
    trace: Sequence[TraceEvent]
    violations: list[Violation]
    #: step at which each violation surfaced (len(steps) for the end-of-execution checks)
    violation_steps: list[int]
    outcome: str
    workload_seed: int
    #: the strategy (or portfolio member) that chose this execution's schedule
    strategy: str = ""
    #: per step, whether the CPU that took it could still run at the next step
    runnable_after: list[bool] = field(default_factory=list)
    #: the faults the search injected: (cpu, its fault point, kind index in FAULT_KINDS)
    faults: tuple[tuple[int, int, int], ...] = ()
    kinds: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.kinds = frozenset(v.name for v in self.violations)

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def first_violation(self, ignore: frozenset[str] = frozenset()) -> tuple[str, int] | None:
        """(name, step) of the first violation whose name is not ignored."""
        for v, step in zip(self.violations, self.violation_steps, strict=True):
            if v.name not in ignore:
                return v.name, step
        return None

    def preemptions(self) -> int:
        """Switches away from a CPU that could have run on, counted as the search bound counts."""
        return count_preemptions(self.steps, self.runnable_after)


def count_preemptions(steps: list[int] | tuple[int, ...], runnable_after: list[bool]) -> int:
    """A preemption: the next step goes to another CPU while the previous one could go on.

    ``runnable_after[i]`` says whether the CPU of step i was still runnable at step
    i + 1; without that knowledge (an empty list) every switch counts.
    """
    n = 0
    for i in range(1, len(steps)):
        if steps[i] != steps[i - 1] and (not runnable_after or runnable_after[i - 1]):
            n += 1
    return n
