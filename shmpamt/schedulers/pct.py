"""PCT: probabilistic concurrency testing (Burckhardt, Kothari, Musuvathi, Nagarakatte,
"A Randomized Scheduler with Probabilistic Guarantees of Finding Bugs", ASPLOS 2010).

Each execution gives every CPU a random distinct priority >= d and draws d-1
priority change points uniformly from [1, k]; it always runs the
highest-priority runnable CPU, and after the change point numbered i the CPU
that just ran drops to priority i (below every initial priority).

Probability bound: a bug of depth d (one that needs d ordering constraints
between steps to hold) is found by one execution with probability at least
1 / (n * k^(d-1)) for n CPUs and k steps, because it suffices that the right CPU
gets the top initial priority (1/n) and each of the d-1 change points lands on
its one right step (1/k each). Over r independent executions the chance of
missing it is at most (1 - p)^r.

As in shuttle, only steps where more than one CPU is runnable count towards k
and the change points: with a single runnable CPU there is nothing to decide,
so counting those steps would only dilute the bound. k is not known before the
first execution; it starts at ``default_steps`` and is then the longest
execution seen so far (in counted steps).
"""

from __future__ import annotations

from collections.abc import Sequence

from shmpamt.errors import SchedulingError
from shmpamt.schedulers.base import BaseScheduler, SplitMix64

DEFAULT_STEPS = 50


class PCT(BaseScheduler):
    """PCT with bug depth ``depth`` (d >= 1; d = 1 is a random fixed-priority order)."""

    name = "pct"

    def __init__(
        self,
        depth: int = 2,
        seed: int = 0,
        max_executions: int | None = None,
        default_steps: int = DEFAULT_STEPS,
        workload_seed: int | None = None,
        vary_workload: bool = True,
    ) -> None:
        if depth < 1:
            raise ValueError("PCT depth must be >= 1")
        if default_steps < 1:
            raise ValueError("default_steps must be >= 1")
        super().__init__(seed if workload_seed is None else workload_seed)
        self.depth = depth
        self.seed = seed
        self.max_executions = max_executions
        self.default_steps = default_steps
        self.vary_workload = vary_workload
        self._rng = SplitMix64(seed)
        # CPUs still at their initial priority, highest first (priority d + rank from the end)
        self._order: list[int] = []
        # CPUs lowered at a change point: cpu -> priority in [1, d-1]
        self._lowered: dict[int, int] = {}
        # change point (a count of decisions made) -> the priority it lowers to
        self._change_points: dict[int, int] = {}
        self._decisions = 0
        self._max_decisions = 0

    @property
    def k(self) -> int:
        """Current estimate of an execution's length in counted steps."""
        return self._max_decisions if self._max_decisions > 0 else self.default_steps

    @property
    def change_points(self) -> dict[int, int]:
        """This execution's change points: decisions made -> new priority."""
        return dict(self._change_points)

    def _seed_for(self, execution: int) -> int:
        return self._base_seed + (execution if self.vary_workload else 0)

    def _start(self) -> bool:
        if self.max_executions is not None and self.executions >= self.max_executions:
            return False
        self._order = []
        self._lowered = {}
        self._decisions = 0
        points = self._rng.sample(range(1, self.k + 1), self.depth - 1)
        # Change point number i (1-based, in draw order) lowers to priority i.
        self._change_points = {p: i + 1 for i, p in enumerate(points)}
        return True

    def _priority(self, cpu: int) -> int:
        if cpu in self._lowered:
            return self._lowered[cpu]
        return self.depth + len(self._order) - 1 - self._order.index(cpu)

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        for cpu in sorted(runnable):
            if cpu not in self._lowered and cpu not in self._order:
                # A uniformly random insertion point keeps the initial order a
                # uniformly random permutation however late a CPU shows up.
                self._order.insert(self._rng.below(len(self._order) + 1), cpu)
        if len(runnable) > 1:
            point = self._change_points.get(self._decisions)
            if point is not None and current is not None:
                if current in self._order:
                    self._order.remove(current)
                self._lowered[current] = point
            self._decisions += 1
            self._max_decisions = max(self._max_decisions, self._decisions)
        best = max(runnable, key=self._priority)
        # Invariant: priorities are distinct, so the highest runnable CPU is unique.
        prios = [self._priority(c) for c in runnable]
        if prios.count(max(prios)) != 1:
            raise SchedulingError(
                f"PCT priorities collide: {dict(zip(runnable, prios, strict=True))}"
            )
        return best

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        # With the same CPUs runnable, priorities only move at a change point.
        if len(runnable) < 2:
            return limit
        ahead = [p - self._decisions for p in self._change_points if p >= self._decisions]
        return min([limit, *ahead])

    def per_run_probability(self) -> float:
        """Lower bound 1/(n k^(d-1)) of finding a depth-d bug in one execution."""
        n = max(self.cpus_seen, 1)
        return 1.0 / float(n * self.k ** (self.depth - 1))

    def coverage(self) -> str:
        p = self.per_run_probability()
        runs = self.executions
        total = 1.0 - (1.0 - p) ** runs
        return (
            f"pct d={self.depth} (seed {self.seed}): {runs} executions, n={self.cpus_seen} CPUs, "
            f"k={self.k} steps: a depth-{self.depth} bug is found per run with p >= "
            f"1/(n*k^{self.depth - 1}) = {p:.3g}, so over {runs} runs with probability "
            f">= {total:.3g}"
        )
