"""Bounded exhaustive DFS over interleavings with a preemption bound (CHESS-style).

Stateless search: nothing of the machine is saved. Each execution replays the
recorded prefix of choices from the start, then takes the non-preemptive
default (keep running the current CPU, else the lowest runnable one) at every
new step, recording which alternatives it could also have taken. The next
execution backtracks to the deepest step that still has an untried
alternative. A *preemption* is switching away from a CPU that is still
runnable; alternatives that would push an execution past ``preemption_bound``
preemptions are never recorded, which is what makes the space small (Musuvathi
and Qadeer, PLDI 2007: most concurrency bugs need very few preemptions).

Because the search replays, the system under test must be deterministic given
the choices: if a replayed step sees a different runnable set or current CPU
than recorded, that is reported as :class:`Nondeterminism`, never ignored.
The workload's random numbers are one fixed stream for all executions for the
same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shmpamt.schedulers.base import BaseScheduler, Claim, Nondeterminism, default_choice


@dataclass
class _Level:
    """One scheduling decision on the current path of the search tree."""

    runnable: tuple[int, ...]
    current: int | None
    choice: int
    #: preemptions on the path up to and including ``choice``
    preemptions: int
    untried: list[int] = field(default_factory=list)


def _is_preemption(runnable: Sequence[int], current: int | None, cpu: int) -> bool:
    return current is not None and current in runnable and cpu != current


class DFS(BaseScheduler):
    """Every interleaving with at most ``preemption_bound`` preemptions, each exactly once."""

    name = "dfs"

    def __init__(
        self,
        preemption_bound: int | None = 2,
        max_executions: int | None = None,
        workload_seed: int = 0,
    ) -> None:
        """``preemption_bound`` None: unbounded (all interleavings)."""
        if preemption_bound is not None and preemption_bound < 0:
            raise ValueError("preemption bound must be >= 0")
        super().__init__(workload_seed)
        self.preemption_bound = preemption_bound
        self.max_executions = max_executions
        self._levels: list[_Level] = []
        #: steps the current execution must replay before it is in new territory
        self._replay_len = 0
        #: True once every execution within the bound has been run
        self.exhausted = False

    def _within(self, preemptions: int) -> bool:
        return self.preemption_bound is None or preemptions <= self.preemption_bound

    def _start(self) -> bool:
        if self.exhausted:
            return False
        if self.executions > 0:
            if len(self.last_steps) < self._replay_len:
                raise Nondeterminism(
                    f"execution {self.executions} ended after {len(self.last_steps)} steps, before "
                    f"the {self._replay_len} steps of its recorded prefix"
                )
            # Backtrack to the deepest step with an alternative left.
            while self._levels and not self._levels[-1].untried:
                self._levels.pop()
            if not self._levels:
                self.exhausted = True
                return False
            if self.max_executions is not None and self.executions >= self.max_executions:
                return False
            last = self._levels[-1]
            before = self._levels[-2].preemptions if len(self._levels) > 1 else 0
            last.choice = last.untried.pop(0)
            last.preemptions = before + _is_preemption(last.runnable, last.current, last.choice)
            self._replay_len = len(self._levels)
        elif self.max_executions is not None and self.max_executions < 1:
            return False
        return True

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        i = len(self.steps)
        now = tuple(sorted(runnable))
        if i < len(self._levels):
            level = self._levels[i]
            # Invariant: replaying the same choices reaches the same states.
            if level.runnable != now or level.current != current:
                raise Nondeterminism(
                    f"step {i} replayed with runnable {list(now)} and current {current}, but was "
                    f"recorded with runnable {list(level.runnable)} and current {level.current}: "
                    "the execution is not deterministic given the schedule"
                )
            return level.choice
        before = self._levels[-1].preemptions if self._levels else 0
        choice = default_choice(now, current)
        untried = [
            cpu
            for cpu in now
            if cpu != choice and self._within(before + _is_preemption(now, current, cpu))
        ]
        preemptions = before + _is_preemption(now, current, choice)
        self._levels.append(_Level(now, current, choice, preemptions, untried))
        return choice

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        # On the recorded prefix the levels say; past it, the default keeps ``cpu``.
        now = tuple(sorted(runnable))
        i = len(self.steps)
        k = 0
        while k < limit and i + k < len(self._levels):
            level = self._levels[i + k]
            if level.choice != cpu or level.runnable != now or level.current != cpu:
                return k
            k += 1
        return limit

    @property
    def preemptions(self) -> int:
        """Preemptions in the current execution so far."""
        n = len(self.steps)
        return self._levels[n - 1].preemptions if n else 0

    @property
    def claim(self) -> Claim:
        if not self.exhausted:
            return "sampled"
        return "verified" if self.preemption_bound is None else "bounded"

    def coverage(self) -> str:
        bound = "unbounded" if self.preemption_bound is None else f"<= {self.preemption_bound}"
        if self.exhausted:
            return (
                f"dfs: bounded space exhausted: all {self.executions} interleavings with "
                f"{bound} preemptions explored"
            )
        return (
            f"dfs: NOT exhausted: {self.executions} executions with {bound} preemptions so far "
            "(stopped by the budget before the bounded space was covered)"
        )
