"""Uniform random walk: at every step, any runnable CPU with equal probability.

The baseline strategy: cheap, unbiased per step, and good at shallow bugs, but
the chance of a long run of one CPU (which many bugs need) shrinks
geometrically; PCT is the one with a guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

from shmpamt.schedulers.base import SeededSampler


class RandomWalk(SeededSampler):
    """Seeded uniform choice among the runnable CPUs."""

    name = "random"

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        ordered = sorted(runnable)
        return ordered[self._rng.below(len(ordered))]

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        # The numbers the next choices will draw are already determined: read them.
        ordered = sorted(runnable)
        n = len(ordered)
        k = i = 0
        while k < limit:
            x = self._rng.peek(i)
            i += 1
            if not self._rng.accepts(x, n):
                continue  # below() would draw again: the next number decides
            if ordered[x % n] != cpu:
                break
            k += 1
        return k

    def follow(self, runnable: Sequence[int], cpu: int, n: int) -> int:
        # next_cpu's bookkeeping once for the run; one draw per decision, as always.
        ordered = sorted(runnable)
        below, k = self._rng.below, len(ordered)
        for i in range(n):
            chosen = ordered[below(k)]
            if chosen != cpu:
                self._book(ordered, [cpu] * i + [chosen])
                return i
        self._book(ordered, [cpu] * n)
        return n

    def coverage(self) -> str:
        steps = max(self.max_steps, len(self.steps))
        return (
            f"random walk (seed {self.seed}): {self.executions} executions, "
            f"{self.total_steps} scheduled steps, {self.distinct_schedules} distinct schedules, "
            f"longest {steps} steps; no guarantee for any bug depth"
        )
