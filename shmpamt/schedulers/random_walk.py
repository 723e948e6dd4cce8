"""Uniform random walk: at every step, any runnable CPU with equal probability.

The baseline strategy: cheap, unbiased per step, and good at shallow bugs, but
the chance of a long run of one CPU (which many bugs need) shrinks
geometrically; PCT is the one with a guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

from shmpamt.schedulers.base import SeededSampler, below_limit


class RandomWalk(SeededSampler):
    """Seeded uniform choice among the runnable CPUs."""

    name = "random"

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        ordered = sorted(runnable)
        return ordered[self._rng.below(len(ordered))]

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        # The numbers the next choices will draw are already determined: read them.
        made = self.plan(runnable, cpu, limit)
        return next((i for i, o in enumerate(made) if o != cpu), len(made))

    def plan(self, runnable: Sequence[int], cpu: int, limit: int) -> list[int]:
        # One number per decision; one below() would reject only makes the plan shorter.
        ordered = sorted(runnable)
        n, top = len(ordered), below_limit(len(ordered))
        return [ordered[x % n] for x in self._rng.ahead(limit) if x < top]

    def follow(self, runnable: Sequence[int], cpu: int, made: Sequence[int]) -> int:
        # next_cpu's bookkeeping once for the run; one number per decision, as always.
        ordered = sorted(runnable)
        n, top, k = len(ordered), below_limit(len(ordered)), len(made)
        xs = self._rng.ahead(k)
        if max(xs, default=0) < top and [ordered[x % n] for x in xs] == list(made):
            self._rng.skip(k)
            self._book(ordered, made)
            return k
        below = self._rng.below  # a number rejected, or a promise broken: one at a time
        for i, want in enumerate(made):
            chosen = ordered[below(n)]
            if chosen != want:
                self._book(ordered, [*made[:i], chosen])
                return i
        self._book(ordered, made)
        return k

    def coverage(self) -> str:
        steps = max(self.max_steps, len(self.steps))
        return (
            f"random walk (seed {self.seed}): {self.executions} executions, "
            f"{self.total_steps} scheduled steps, {self.distinct_schedules} distinct schedules, "
            f"longest {steps} steps; no guarantee for any bug depth"
        )
