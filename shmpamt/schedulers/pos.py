"""POS: partial order sampling (Yuan, Yang, Gu, "Partial Order Aware Concurrency
Sampling", CAV 2018).

Every pending event gets a random priority and the highest-priority runnable
CPU runs its event. After an event runs, the pending events that race with it
(are dependent on it) draw fresh priorities, and the CPU that ran gets a fresh
one for its next event. A uniform random walk samples *interleavings*
uniformly, so a partial order with many linearisations (lots of independent
steps) crowds out the rare ones; re-drawing only on dependence makes the
sampling track partial orders instead, which is what bugs depend on.

Without ``pending`` (a controller that does not report accesses) every pair of
steps is taken as dependent: all priorities are re-drawn at every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shmpamt.schedulers.base import Access, SeededSampler, dependent


class POS(SeededSampler):
    """Seeded partial order sampling; execution i uses workload seed ``workload_seed + i``."""

    name = "pos"
    uses_pending = True

    def __init__(
        self,
        seed: int = 0,
        max_executions: int | None = None,
        workload_seed: int | None = None,
        vary_workload: bool = True,
    ) -> None:
        super().__init__(seed, max_executions, workload_seed, vary_workload)
        #: priority of each parked CPU's pending event
        self._priority: dict[int, int] = {}

    def _start(self) -> bool:
        self._priority = {}
        return super()._start()

    def _decide(
        self, runnable: Sequence[int], current: int | None, pending: Mapping[int, Access] | None
    ) -> int:
        parked = sorted(pending) if pending is not None else sorted(runnable)
        # CPUs that finished lose their priority; newly parked events draw one.
        self._priority = {c: self._priority[c] for c in parked if c in self._priority}
        for c in parked:
            if c not in self._priority:
                self._priority[c] = self._rng.next_u64()
        choice = max(sorted(runnable), key=lambda c: self._priority[c])
        ran = pending[choice] if pending is not None else None
        for c in parked:
            if c != choice and (ran is None or pending is None or dependent(ran, pending[c])):
                self._priority[c] = self._rng.next_u64()
        # The chosen CPU's next event is a new one: it draws at the next step.
        del self._priority[choice]
        return choice

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        return self._decide(runnable, current, None)

    def coverage(self) -> str:
        return (
            f"pos (seed {self.seed}): sampled: {self.executions} executions, "
            f"{self.distinct_schedules} distinct schedules; every interleaving has a non-zero "
            "chance per execution, but no per-bug bound is claimed"
        )
