"""The strategies a user may name, one line of help each, and one way to build them.

Importing this module (or :mod:`shmpamt.schedulers`) loads no cffi, posix_ipc
or atomics binding: strategies are pure, and the CLI lists them cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from shmpamt.schedulers.base import BaseScheduler, Claim, Scheduler, SplitMix64
from shmpamt.schedulers.dfs import DFS
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.faults import FaultDraw, FaultTree, kinds_of
from shmpamt.schedulers.pct import PCT
from shmpamt.schedulers.portfolio import Portfolio
from shmpamt.schedulers.pos import POS
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.symmetry import Symmetry

STRATEGIES: Final[tuple[str, ...]] = ("portfolio", "random", "pct", "pos", "dfs", "dpor")
DEFAULT_STRATEGY: Final = "portfolio"
#: "plans" makes dpor with faults search a whole tree per plan (FaultTree), as it once
#: did; anything else (the default): outcomes are branches of their steps in one tree
FAULT_SEARCH_ENV: Final = "SHMPAMT_FAULT_SEARCH"
#: dfs's preemption bound when none is given (unbounded dfs rarely finishes)
DFS_DEFAULT_PREEMPTIONS: Final = 2

HELP: Final[dict[str, str]] = {
    "portfolio": "default: rotate random, PCT d=1..4, POS and DPOR; verified if DPOR finishes",
    "random": "uniform random walk over runnable CPUs; good at shallow bugs, no guarantee",
    "pct": "PCT at --depth d: finds any depth-d bug with p >= 1/(n k^(d-1)) per execution",
    "pos": "partial order sampling: random priorities re-drawn on conflicting steps",
    "dfs": "every interleaving with <= --preemptions preemptions (all if unbounded)",
    "dpor": "one interleaving per Mazurkiewicz class (source-DPOR + sleep sets): a proof",
}


def _shard_seed(seed: int, index: int) -> int:
    """Sampling jobs of a sharded run differ by seed (shard 0 keeps the user's)."""
    return seed if index == 0 else SplitMix64(seed ^ (index << 32)).next_u64()


def make_scheduler(
    name: str,
    *,
    seed: int = 0,
    depth: int = 2,
    preemptions: int | None = None,
    max_executions: int | None = None,
    workload_seed: int | None = None,
    shard: tuple[int, int] = (0, 1),
    faults: Mapping[str, float] | None = None,
    max_faults: int = 1,
    fault_share: float = 1.0,
    symmetry: Symmetry | None = None,
    halt_at_violation: bool = False,
) -> BaseScheduler:
    """A fresh strategy ``name`` (one of :data:`STRATEGIES`).

    ``faults`` (kind -> probability per fault point, :mod:`~shmpamt.schedulers.faults`)
    with ``max_faults`` > 0 makes faults choices of the search: dfs and dpor run
    every plan of at most ``max_faults`` injections of the kinds given, each to the
    end; sampling strategies draw them with those probabilities on a
    ``fault_share`` of their executions. None or empty: no fault is injected.

    ``preemptions`` None means unbounded for dpor (and the portfolio's dpor
    member) and :data:`DFS_DEFAULT_PREEMPTIONS` for dfs (pass a bound to go
    further); ``workload_seed`` None means the same as ``seed``; ``shard``
    (index, count) splits dpor's search, and gives sampling strategies distinct
    seeds per job; dfs cannot be sharded; ``symmetry``: dpor's interchangeable CPUs;
    ``halt_at_violation``: dpor ends each execution's search at its first violation.
    """
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {shard} must be (index, count) with 0 <= index < count")
    wseed = seed if workload_seed is None else workload_seed
    s = _shard_seed(seed, index)
    probabilities = dict(faults or {}) if max_faults > 0 else {}
    if probabilities and name != "portfolio":
        kinds = kinds_of(probabilities)
        if name == "dpor" and os.environ.get(FAULT_SEARCH_ENV, "branch") != "plans":
            # Outcomes as branches of the steps (see dpor's docstring): shards as usual.
            return DPOR(
                preemptions, max_executions, wseed, shard, symmetry=symmetry,
                fault_kinds=kinds, max_faults=max_faults, halt_at_violation=halt_at_violation,
            )  # fmt: skip
        if name in ("dfs", "dpor"):
            if count > 1 and index > 0:
                # Plans are found from every execution of the tree before them, so one
                # job (the first) searches them all; the others take their share of
                # the no-fault tree, which the first job also runs.
                return make_scheduler(
                    name, seed=seed, preemptions=preemptions, max_executions=max_executions,
                    workload_seed=workload_seed, shard=shard, halt_at_violation=halt_at_violation,
                )  # fmt: skip
            return FaultTree(
                lambda: make_scheduler(name, seed=seed, preemptions=preemptions,
                                       workload_seed=workload_seed,
                                       halt_at_violation=halt_at_violation),
                kinds, max_faults, max_executions,
            )  # fmt: skip
        inner = make_scheduler(
            name, seed=seed, depth=depth, max_executions=max_executions,
            workload_seed=workload_seed, shard=shard,
        )  # fmt: skip
        return FaultDraw(inner, probabilities, max_faults, fault_share, s)
    if name == "portfolio":
        return Portfolio(
            s, max_executions, wseed, preemptions, shard,
            faults=probabilities, max_faults=max_faults, fault_share=fault_share,
        )  # fmt: skip
    if name == "random":
        return RandomWalk(s, max_executions, wseed)
    if name == "pct":
        return PCT(depth, s, max_executions, workload_seed=wseed)
    if name == "pos":
        return POS(s, max_executions, wseed)
    if name == "dfs":
        if count > 1:
            raise ValueError("dfs cannot be sharded; use dpor")
        bound = DFS_DEFAULT_PREEMPTIONS if preemptions is None else preemptions
        return DFS(bound, max_executions, wseed)
    if name == "dpor":
        return DPOR(
            preemptions, max_executions, wseed, shard, symmetry=symmetry,
            halt_at_violation=halt_at_violation,
        )  # fmt: skip
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def claim_of(scheduler: Scheduler) -> Claim:
    """What a finished strategy's executions support: "verified", "bounded" or "sampled"."""
    return scheduler.claim
