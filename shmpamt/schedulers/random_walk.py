"""Uniform random walk: at every step, any runnable CPU with equal probability.

The baseline strategy: cheap, unbiased per step, and good at shallow bugs, but
the chance of a long run of one CPU (which many bugs need) shrinks
geometrically; PCT is the one with a guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

from shmpamt.schedulers.base import SeededSampler, uniform_pick


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
        k = 0
        for x in self._rng.ahead(limit):
            i = uniform_pick(x, n)
            if i >= 0 and ordered[i] != cpu:
                break
            k += i >= 0  # a rejected number: the next one decides
        return k

    def uniform_numbers(self, limit: int) -> list[int] | None:
        return self._rng.ahead(limit)

    def follow(self, decisions: Sequence[tuple[Sequence[int], int]], cpu: int | None) -> int:
        # next_cpu's bookkeeping once for them all; one number per decision, as always.
        k = len(decisions)
        made = [want for _, want in decisions]
        last: Sequence[int] | None = None
        ordered: list[int] = []
        for (r, want), x in zip(decisions, self._rng.ahead(k), strict=True):
            if r is not last:  # runs of decisions share their set
                last, ordered = r, sorted(r)
            i = uniform_pick(x, len(ordered))
            if i < 0 or ordered[i] != want:
                break  # a number rejected, or a decision differs: one at a time
        else:
            self._rng.skip(k)
            self._book(decisions, made)
            return k
        below = self._rng.below
        for i, (r, want) in enumerate(decisions):
            chosen = sorted(r)[below(len(r))]
            if chosen != want:
                self._book(decisions, [*made[:i], chosen])
                return i
        self._book(decisions, made)
        return k

    def coverage(self) -> str:
        steps = max(self.max_steps, len(self.steps))
        return (
            f"random walk (seed {self.seed}): {self.executions} executions, "
            f"{self.total_steps} scheduled steps, {self.distinct_schedules} distinct schedules, "
            f"longest {steps} steps; no guarantee for any bug depth"
        )
