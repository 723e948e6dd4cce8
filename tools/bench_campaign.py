#!/usr/bin/env python3
"""What the Dask layer costs: the same explore shards run directly and as a campaign.

Prints, in one run, executions/s of the same shards (``locked`` under the random
walk, so no minimisation blurs the figure) run one after another in this
process through ``shmpamt.api.run``, and through a local Dask cluster of 1 and
2 worker processes (cluster start-up timed apart: it is paid once per
campaign). Target (issue 15): with 1 worker the Dask layer costs at most 10%
against running the shards directly.

    python tools/bench_campaign.py [--shards 4] [--executions 300]
"""

from __future__ import annotations

import argparse
import os
import time

from shmpamt import api
from shmpamt.campaign.cluster import local_cluster, run_campaign
from shmpamt.campaign.matrix import Plan


def direct(plan: Plan) -> tuple[float, int]:
    """The shards one by one, each as a campaign worker runs it: one explorer, one core."""
    os.environ["SHMPAMT_CORE_SLOT"] = "0"
    try:
        t0 = time.monotonic()
        ran = sum(api.run(s.config()).raw.operations for s in plan.shards())
        return time.monotonic() - t0, ran
    finally:
        del os.environ["SHMPAMT_CORE_SLOT"]


def via_dask(plan: Plan, workers: int) -> tuple[float, float, int]:
    t0 = time.monotonic()
    with local_cluster(workers) as cluster:
        started = time.monotonic() - t0
        t1 = time.monotonic()
        run = run_campaign(plan, scheduler=cluster.scheduler_address)
        wall = time.monotonic() - t1
    ran = sum(int(o.result["operations"]) for o in run.outcomes if o.result is not None)
    return started, wall, ran


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--executions", type=int, default=300)
    ap.add_argument("--variant", default="locked")
    args = ap.parse_args()
    plan = Plan((args.variant,), ("random",), seeds=args.shards, executions=args.executions)
    wall0, ran0 = direct(plan)
    rate0 = ran0 / wall0
    print(f"{len(plan.shards())} shards x {args.executions} executions of {args.variant}")
    print(f"{'how':28} {'start-up s':>10} {'wall s':>8} {'exec/s':>8} {'vs direct':>9}")
    print(f"{'direct (one by one)':28} {'-':>10} {wall0:8.2f} {rate0:8.1f} {1.0:9.3f}")
    ratios = {}
    for workers in (1, 2):
        start, wall, ran = via_dask(plan, workers)
        rate = ran / wall
        ratios[workers] = rate / rate0
        name = f"dask, {workers} worker(s)"
        print(f"{name:28} {start:10.2f} {wall:8.2f} {rate:8.1f} {ratios[workers]:9.3f}")
    cost = 1 - ratios[1]
    verdict = "met" if cost <= 0.10 else "NOT met"
    print(f"Dask layer cost, 1 worker: {cost:+.1%} of direct throughput (target <= 10%: {verdict})")
    print(f"2 workers vs direct: {ratios[2]:.2f}x")


if __name__ == "__main__":
    main()
