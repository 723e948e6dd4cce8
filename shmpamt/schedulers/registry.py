"""The strategies a user may name, importable without cffi or posix_ipc."""

from __future__ import annotations

from typing import Final

from shmpamt.schedulers.base import Scheduler

#: name -> one line of help, in the order ``--help`` lists them
HELP: Final[dict[str, str]] = {
    "pct": "probabilistic concurrency testing with bug depth --depth",
    "random": "uniform random walk over the runnable CPUs",
    "dfs": "exhaustive depth-first search with at most --preemptions preemptions",
}
STRATEGIES: Final[tuple[str, ...]] = tuple(HELP)
DEFAULT_STRATEGY: Final = "pct"


def make_scheduler(
    name: str,
    *,
    seed: int,
    depth: int = 2,
    preemptions: int | None = 2,
    max_executions: int | None = None,
) -> Scheduler:
    from shmpamt.schedulers.dfs import DFS
    from shmpamt.schedulers.pct import PCT
    from shmpamt.schedulers.random_walk import RandomWalk

    if name == "random":
        return RandomWalk(seed=seed, max_executions=max_executions)
    if name == "pct":
        return PCT(depth=depth, seed=seed, max_executions=max_executions)
    if name == "dfs":
        return DFS(preemption_bound=preemptions, workload_seed=seed, max_executions=max_executions)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
