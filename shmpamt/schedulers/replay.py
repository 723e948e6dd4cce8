"""Replay: follow a recorded schedule step for step, and say so loudly when it cannot.

After the recorded steps run out, the execution continues with the
non-preemptive default (see :func:`default_choice`), so a truncated schedule
still determines exactly one execution; the workload's random numbers come from
the schedule's seed. A replay that meets a recorded CPU which is not runnable
raises :class:`ScheduleMismatch`: either the schedule was made for another
variant or scenario, or the run is not deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.base import BaseScheduler, ScheduleMismatch, default_choice

__all__ = ["Replay", "ScheduleMismatch"]


class Replay(BaseScheduler):
    """Runs ``schedule`` ``times`` times (each one identical)."""

    name = "replay"

    def __init__(self, schedule: Schedule, times: int = 1) -> None:
        if times < 0:
            raise ValueError("times must be >= 0")
        super().__init__(schedule.seed)
        self.schedule = schedule
        self.times = times
        #: steps of the current execution taken by the default after the recording ran out
        self.beyond_recorded = 0

    def _start(self) -> bool:
        self.beyond_recorded = 0
        return self.executions < self.times

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        i = len(self.steps)
        if i >= len(self.schedule.steps):
            self.beyond_recorded += 1
            return default_choice(runnable, current)
        cpu = self.schedule.steps[i]
        if cpu not in runnable:
            raise ScheduleMismatch(
                f"step {i}: the schedule grants cpu {cpu}, but only {sorted(runnable)} can run "
                f"(schedule made for another variant/scenario, or a nondeterministic run)"
            )
        return cpu

    def board_faults(self) -> dict[int, list[tuple[int, int]]]:
        """The schedule's injected faults, at the fault points where they were found."""
        out: dict[int, list[tuple[int, int]]] = {}
        for cpu, point, kind in self.schedule.faults:
            out.setdefault(cpu, []).append((point, 1 << kind))
        return out

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        # The recording says; past its end, the default keeps ``cpu`` (it can run).
        recorded = self.schedule.steps
        i = len(self.steps)
        k = 0
        while k < limit and i + k < len(recorded):
            if recorded[i + k] != cpu:
                return k
            k += 1
        return limit

    def coverage(self) -> str:
        return (
            f"replay: {self.executions} of {self.times} executions of a {len(self.schedule.steps)}"
            f"-step schedule ({self.beyond_recorded} steps past its end by the default)"
        )
