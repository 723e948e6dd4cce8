#!/usr/bin/env python3
"""What the Dask layer costs: the same explore shards run directly and as a campaign.

Prints, in one run, executions/s of the same shards (``locked`` under the random
walk, so no minimisation blurs the figure) run one after another in this
process through ``shmpamt.api.run``, and through a local Dask cluster of 1 and
2 worker processes (cluster start-up timed apart: it is paid once per
campaign). Target (issue 15): with 1 worker the Dask layer costs at most 10%
against running the shards directly.

    python tools/bench_campaign.py [--shards 4] [--executions 300]

``--proof``: instead, distributed DPOR proofs through a local cluster of 1 and of 2
workers, in the same run (target, issue 28: 2 workers in at most 0.6x the time of
1, on the largest scenario the proof reaches): by default ``v6`` 4 x 1 and
``locked`` 3 x 2 (the largest verified, about 3 and 1.5 minutes on 1 worker), with
symmetry as the campaign runs them. Then the task log of a 1-worker run of
``--sim-scenario`` (``v6`` 3 x 1) cut finer (``--sim-slice``; 0 skips it) is
replayed for N = 1, 2, 4, 8, 16, 64 workers with the cost per task measured in
that run. Each worker's session start (seconds, and very load-dependent) is
timed apart and shown; the ratio is given without it and with it.

    python tools/bench_campaign.py --proof [--scenario v6:4x1 --scenario locked:3x2] \
        [--no-symmetry] [--slice 400] [--depth 12] [--sim-scenario v6:3x1] [--sim-slice 25]
"""

from __future__ import annotations

import argparse
import os
import time

from distributed import Client

from shmpamt import api
from shmpamt.campaign.cluster import local_cluster, run_campaign
from shmpamt.campaign.matrix import Plan
from shmpamt.campaign.proof import (
    DEFAULT_DEPTH,
    DEFAULT_SLICE,
    Frontier,
    ProofSpec,
    run_proof,
    simulate,
    warm_task,
)


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


def proof(spec: ProofSpec, workers: int) -> tuple[float, float, Frontier]:
    """(seconds every worker took to start its session, seconds of the proof after
    that, its frontier), on a fresh local cluster (its start-up not counted)."""
    with local_cluster(workers) as cluster, Client(cluster, set_as_default=False) as client:
        # Each worker starts its session for the scenario (daemon and CPU processes) once;
        # on a loaded machine that takes seconds and varies a lot, so it is timed apart.
        t0 = time.monotonic()
        addrs = list(client.scheduler_info(n_workers=-1)["workers"])
        warm = [
            client.submit(warm_task, spec.task(()), workers=[a], pure=False, key=f"warm-{a}")
            for a in addrs
        ]
        client.gather(warm)
        started = time.monotonic() - t0
        frontier = Frontier(spec)
        t1 = time.monotonic()
        run_proof(client, frontier)
        return started, time.monotonic() - t1, frontier


def _scenario(text: str) -> tuple[str, int, int]:
    """``VARIANT:CxR`` (e.g. ``locked:3x2``) as (variant, cpus, rounds)."""
    variant, _, shape = text.rpartition(":")
    cpus, rounds = (int(x) for x in shape.split("x"))
    return variant, cpus, rounds


def one_and_two(spec: ProofSpec) -> float:
    """The proof on 1 worker, then on 2 (fresh clusters, same run): the table's rows,
    and the ratio of the 2-worker wall to the 1-worker one."""
    walls, starts, counts = {}, {}, {}
    for workers in (1, 2):
        started, wall, f = proof(spec, workers)
        walls[workers], starts[workers], counts[workers] = wall, started, f.total("complete")
        work = sum(float(e["seconds"]) for e in f.log)
        big = max(float(e["seconds"]) for e in f.log)
        print(
            f"{spec.name:>22} {workers:7} {started:10.2f} {wall:8.2f} {f.verdict:>9} "
            f"{f.total('complete'):9} {f.executions_run:7} {len(f.log):6} {work:8.2f} {big:8.2f}"
        )
        if f.verdict != "verified":
            print(f"{'':>22} {f.reason()}")
    if counts[1] != counts[2]:
        print(f"{spec.name:>22}: the counts differ ({counts}): not verified on both")
    ratio = walls[2] / walls[1]
    with_start = (walls[2] + starts[2]) / (walls[1] + starts[1])
    met = "met" if ratio <= 0.6 else "NOT met"
    print(
        f"{spec.name:>22}: 2 workers / 1 worker {ratio:.2f} (target <= 0.60: {met}); "
        f"session start included {with_start:.2f}"
    )
    return ratio


def bench_proof(args: argparse.Namespace) -> None:
    symmetry = not args.no_symmetry
    specs = [
        ProofSpec(v, c, r, slice=args.slice, depth=args.depth, symmetry=symmetry)
        for v, c, r in map(_scenario, args.scenario)
    ]
    print(
        f"proofs of {', '.join(s.name for s in specs)}: slice {args.slice} executions, "
        f"split depth {args.depth}, symmetry {'on' if symmetry else 'off'}"
    )
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"{'proof':>22} {'workers':>7} {'sessions s':>10} {'wall s':>8} {'verdict':>9} "
        f"{'complete':>9} {'run':>7} {'tasks':>6} {'tasks s':>8} {'max s':>8}"
    )
    for spec in specs:
        one_and_two(spec)
    if args.sim_slice <= 0:
        return
    # The simulation replays a 1-worker run's tasks. That run's tree has no splits asked
    # for by idle workers, so it is cut finer (a smaller slice) to be re-spread over N.
    variant, cpus, rounds = _scenario(args.sim_scenario)
    fine = ProofSpec(
        variant,
        cpus,
        rounds,
        slice=args.sim_slice,
        depth=args.depth,
        symmetry=symmetry,
    )
    _, fine_wall, f1 = proof(fine, 1)
    log = f1.log
    work = sum(float(e["seconds"]) for e in log)
    # What 1 worker spent beyond its tasks' own seconds, per task: dispatch, the result's
    # trip, the client's bookkeeping and checkpoint.
    cost = max(0.0, (fine_wall - work) / len(log))
    print(
        f"simulation: 1 worker, slice {fine.slice}: {fine_wall:.2f} s, {len(log)} tasks, "
        f"{work:.2f} s of exploring, {f1.total('complete')} complete"
    )
    print(
        f"cost per task (1 worker's wall minus its tasks' seconds, per task): {cost * 1000:.0f} ms"
    )
    base = simulate(log, 1, cost)
    print(f"{'N':>4} {'simulated s':>12} {'speed-up':>9} {'no cost':>9}")
    for n in (1, 2, 4, 8, 16, 64):
        t = simulate(log, n, cost)
        print(f"{n:4} {t:12.2f} {base / t:9.2f} {simulate(log, 1) / simulate(log, n):9.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--executions", type=int, default=300)
    ap.add_argument("--variant", default=None)
    ap.add_argument("--proof", action="store_true")
    ap.add_argument(
        "--scenario",
        action="append",
        default=None,
        help="--proof: VARIANT:CPUSxROUNDS, repeatable (default v6:4x1 and locked:3x2)",
    )
    ap.add_argument("--sim-scenario", default="v6:3x1")
    ap.add_argument("--no-symmetry", action="store_true")
    ap.add_argument("--slice", type=int, default=DEFAULT_SLICE)
    ap.add_argument("--depth", type=int, default=DEFAULT_DEPTH)
    ap.add_argument("--sim-slice", type=int, default=25)
    args = ap.parse_args()
    if args.proof:
        args.scenario = args.scenario or ["v6:4x1", "locked:3x2"]
        bench_proof(args)
        return
    args.variant = args.variant or "locked"
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
