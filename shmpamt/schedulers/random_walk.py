"""Uniform random walk: at every step, any runnable CPU with equal probability.

The baseline strategy: cheap, unbiased per step, and good at shallow bugs, but
the chance of a long run of one CPU (which many bugs need) shrinks
geometrically; PCT is the one with a guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

from shmpamt.schedulers.base import BaseScheduler, SplitMix64


class RandomWalk(BaseScheduler):
    """Seeded uniform choice among the runnable CPUs."""

    name = "random"

    def __init__(
        self,
        seed: int = 0,
        max_executions: int | None = None,
        workload_seed: int | None = None,
        vary_workload: bool = True,
    ) -> None:
        """``vary_workload``: execution i uses workload seed ``workload_seed + i``."""
        super().__init__(seed if workload_seed is None else workload_seed)
        self.seed = seed
        self.max_executions = max_executions
        self.vary_workload = vary_workload
        self._rng = SplitMix64(seed)

    def _start(self) -> bool:
        return self.max_executions is None or self.executions < self.max_executions

    def _seed_for(self, execution: int) -> int:
        return self._base_seed + (execution if self.vary_workload else 0)

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        ordered = sorted(runnable)
        return ordered[self._rng.below(len(ordered))]

    def coverage(self) -> str:
        steps = max(self.max_steps, len(self.steps))
        return (
            f"random walk (seed {self.seed}): {self.executions} executions, "
            f"{self.total_steps} scheduled steps, {self.distinct_schedules} distinct schedules, "
            f"longest {steps} steps; no guarantee for any bug depth"
        )
