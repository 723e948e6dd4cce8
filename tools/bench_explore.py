#!/usr/bin/env python3
"""Explore at the speed of the machine, and complete verdicts: one run, ratios against
baselines measured in the same run.

1. floor: a bare semaphore ping-pong between two processes pinned on one core
   (a scheduled step costs at least one hand-off each way);
2. throughput on `locked` (default scenario, random walk): one unpinned
   explorer with a hand-off per step (budgeted grants off, as before), one unpinned
   explorer (`--jobs 1 --no-pin`), one pinned explorer, and `--jobs 2`:
   executions/s, steps/s, microseconds per step and its ratio to the floor;
3. exhaustion: DPOR against unbounded DFS (same time cap) on `locked` and `v6`
   at 2 CPUs x 2 rounds and 3 CPUs x 1 round;
4. completeness: per buggy built-in, the kinds DPOR proves for the default
   scenario (2 CPUs x 2 rounds, 2 jobs, up to --proof-cap seconds), and the
   default search (no strategy flags) for the same scenario: seconds until it
   had seen its last kind (median over seeds) and whether every seed saw the
   same set;
5. two-step SEAMCALLs: throughput on `locked` (random walk, 1 pinned explorer) with
   the module holding its locks across two requests per PAMT SEAMCALL (the default)
   against one-step calls (``SHMPAMT_SEAMCALL_STEPS=1``), alternated --repeat times
   in the same run: steps/s, executions/s and the ratios;
6. faults: DPOR (--fault-jobs jobs) on `locked` and `v6` at 2 CPUs x 2 rounds with no
   fault, then with <= 1 and <= 2 injected faults of every kind, each searched two
   ways one after the other: a whole DPOR tree per plan (``SHMPAMT_FAULT_SEARCH=plans``,
   the old way) and outcomes as branches inside one tree (the default): executions,
   seconds, the claim and the verdict, in the same run (capped at --fault-cap s);

7. scale: DPOR as before (no symmetry) against DPOR with its reductions (symmetry),
   same cap, same jobs, one after the other: v6 and locked at 3 CPUs x 2 rounds,
   4 x 1 and 2 x 3 on one range and 3 x 1 on two ranges, and every buggy built-in
   at 2 x 2: executions, seconds, the claim (with the estimate of the tree when the
   cap stopped it) and the kinds, which must be the same.
8. DPOR speed: one pinned session of `locked` (2 CPUs x 2 rounds), the random walk,
   then DPOR without and with symmetry (each tree restarted whenever it is
   exhausted), --seconds each: complete executions/s, steps/s, microseconds per
   step and their ratios to the floor and to the random walk (target: >= 1,000
   complete executions/s per core).
9. start-up: the command a user types, ``shmpamt explore --variant v6 --strategy dpor
   --jobs 2`` (2 x 2, the target is 2 s) and the same at 1 CPU x 1 round (almost only
   start-up), in fresh interpreters, --repeat A/B pairs: shmpamt's bytecode read from a
   cache against compiled from source at every process start (what every spawned CPU
   and daemon does when PYTHONDONTWRITEBYTECODE is set and no __pycache__ exists):
   median wall seconds and the ratio. Both use caches of their own
   (PYTHONPYCACHEPREFIX), the same but for shmpamt's own files.
10. halting: every buggy built-in at 2 x 2 (DPOR with symmetry, --jobs, --proof-cap),
   the full search then the search that ends each execution's at its first violation
   (``--halt-at-violation``), one after the other: executions, seconds, claim, kinds
   (which must be the same; the target is 20 s).

    python tools/bench_explore.py [--seconds 5] [--cap 60] [--seeds 5] [--proof-cap 600]
                                  [--fault-cap 600] [--fault-jobs 2] [--repeat 3]
                                  [--scale-cap 120] [--skip 3,4,8,9,10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import posix_ipc
from rich.console import Console
from rich.table import Table

import shmpamt.api as api
from shmpamt.config import ExploreConfig, Scenario
from shmpamt.explorer.search import ExploreProgress
from shmpamt.explorer.session import Session
from shmpamt.explorer.symmetry import scenario_symmetry
from shmpamt.machine.ipc import (
    create_semaphore,
    make_name,
    new_token,
    open_semaphore,
    remove_semaphore,
)
from shmpamt.machine.placement import core_for
from shmpamt.machine.seamcall import SEAMCALL_STEPS_ENV
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.registry import FAULT_SEARCH_ENV

BUGGY = ["rfc", "kai", "v4", "rfc-norecheck", "rfc-early-publish", "rfc-leak-on-lost-race"]


def _pong(ping_name: str, pong_name: str, core: int) -> None:
    os.sched_setaffinity(0, {core})
    ping, pong = open_semaphore(ping_name), open_semaphore(pong_name)
    while True:
        ping.acquire()
        pong.release()


def floor_us(rounds: int = 20_000) -> float:
    """Microseconds per round trip (two hand-offs) of a pinned semaphore ping-pong."""
    token = new_token()
    ping = create_semaphore(make_name("benchping", token), 0)
    pong = create_semaphore(make_name("benchpong", token), 0)
    core = sorted(os.sched_getaffinity(0))[0]
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    p = mp.get_context("spawn").Process(target=_pong, args=(ping.name, pong.name, core))
    p.start()
    try:
        for _ in range(1000):
            ping.release()
            pong.acquire()
        t0 = time.perf_counter()
        for _ in range(rounds):
            ping.release()
            pong.acquire()
        return (time.perf_counter() - t0) / rounds * 1e6
    finally:
        p.kill()
        p.join()
        os.sched_setaffinity(0, old)
        for s in (ping, pong):
            remove_semaphore(s, True)


def stepwise_throughput(seconds: float) -> tuple[float, float]:
    """(executions/s, steps/s) of an unpinned explorer that hands off every step
    (budgeted grants off, as before they existed), random walk on locked."""
    with Session(Scenario("locked"), None, batch=False) as s:
        _, ex_s, st_s = session_speed(s, seconds, "random")
    return ex_s, st_s


def throughput(seconds: float, jobs: int, pin: bool) -> tuple[float, float]:
    """(executions/s, steps/s) of random-walk exploration of locked."""
    r = api.explore(
        "locked", strategy="random", budget=seconds, jobs=jobs, pin=pin, minimize=False, seed=1
    )
    e = r.raw.explore
    assert e is not None and r.clean
    return e.executions / r.raw.elapsed_s, e.steps_total / r.raw.elapsed_s


def exhaust(
    variant: str, cpus: int, rounds: int, strategy: str, cap: float, jobs: int
) -> tuple[str, int, bool]:
    """(cell text, executions, finished)."""
    t0 = time.monotonic()
    r = api.explore(
        variant, strategy=strategy, cpus=cpus, rounds=rounds, budget=cap, jobs=jobs,
        preemptions=None if strategy == "dpor" else 50, minimize=False, seed=1,
    )  # fmt: skip
    e = r.raw.explore
    assert e is not None
    took = time.monotonic() - t0
    verdict = "clean" if r.clean else ",".join(sorted(r.found))
    done = e.claim if strategy == "dpor" else ("exhausted" if e.claim != "sampled" else "cap")
    cell = f"{e.executions:,} ex, {took:.1f} s, {done}, {verdict}"
    return cell, e.executions, e.claim != "sampled"


def last_kind_time(variant: str, seed: int) -> tuple[float, frozenset[str], str]:
    """Seconds until the default search saw its last kind, the kinds, and its claim."""
    marks: list[tuple[float, int]] = []

    def tick(p: ExploreProgress) -> None:
        if not marks or p.kinds > marks[-1][1]:
            marks.append((p.elapsed, p.kinds))

    r = api.run(ExploreConfig(variant, seed=seed, minimize=False), on_progress=tick)
    e = r.raw.explore
    assert e is not None
    return (marks[-1][0] if marks else 0.0), r.found, e.claim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    ap.add_argument("--cap", type=float, default=60.0, help="seconds per exhaustion search")
    ap.add_argument("--seeds", type=int, default=5, help="default searches per buggy variant")
    ap.add_argument("--proof-cap", type=float, default=600.0, help="seconds per DPOR proof (4)")
    ap.add_argument("--variants", nargs="*", default=BUGGY)
    ap.add_argument("--fault-cap", type=float, default=600.0, help="seconds per fault search (6)")
    ap.add_argument("--fault-jobs", type=int, default=2, help="explorers per fault search (6)")
    ap.add_argument("--repeat", type=int, default=3, help="A/B pairs (5, 9)")
    ap.add_argument("--scale-cap", type=float, default=120.0, help="seconds per search (7)")
    ap.add_argument("--jobs", type=int, default=2, help="explorers per search (7)")
    ap.add_argument("--scale", nargs="*", default=None, help="only these rows of 7, as v6:3x2x1")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip (1-10)")
    args = ap.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    console = Console(width=250)  # tables in a log stay whole
    floor = floor_us()
    console.print(f"floor: pinned semaphore round trip {floor:.1f} us (two hand-offs)")

    if "2" not in skip:
        t = Table(
            title=f"2. throughput: locked, 2 CPUs x 2 rounds, random walk, {args.seconds:g} s"
        )
        for c in ("explorers", "executions/s", "steps/s", "us/step per core", "vs floor",
                  "vs unpinned", "vs stepwise"):  # fmt: skip
            t.add_column(c, justify="right")
        rows = (("1, unpinned, a hand-off per step", 1, None), ("1, unpinned", 1, False),
                ("1, pinned", 1, True), ("2", 2, True))  # fmt: skip
        measured = [
            (label, jobs, *(stepwise_throughput(args.seconds) if pin is None
                            else throughput(args.seconds, jobs, pin)))
            for label, jobs, pin in rows
        ]  # fmt: skip
        stepwise, unpinned = measured[0][2], measured[1][2]
        for label, jobs, ex_s, st_s in measured:
            per = jobs * 1e6 / st_s
            t.add_row(label, f"{ex_s:,.0f}", f"{st_s:,.0f}", f"{per:.1f}", f"{per / floor:.1f}x",
                      f"{ex_s / unpinned:.2f}x", f"{ex_s / stepwise:.2f}x")  # fmt: skip
        console.print(t)

    if "3" not in skip:
        t = Table(title=f"3. exhaustion (cap {args.cap:g} s): DPOR against unbounded DFS")
        for c in ("variant", "scenario", "dpor, 1 job", "dpor, 2 jobs", "dfs, unbounded",
                  "dfs / dpor executions"):  # fmt: skip
            t.add_column(c)
        for variant in ("locked", "v6"):
            for cpus, rounds in ((2, 2), (3, 1)):
                one, n_dpor, proved = exhaust(variant, cpus, rounds, "dpor", args.cap, 1)
                two, _, _ = exhaust(variant, cpus, rounds, "dpor", args.cap, 2)
                dfs, n_dfs, dfs_done = exhaust(variant, cpus, rounds, "dfs", args.cap, 1)
                # DFS stopped by the cap has run only part of its space: the ratio is a floor.
                at_least = "" if dfs_done else ">= "
                ratio = f"{at_least}{n_dfs / n_dpor:.1f}x" if proved else "dpor not finished"
                t.add_row(variant, f"{cpus} CPUs x {rounds}", one, two, dfs, ratio)
                console.print(f"  done: {variant} {cpus}x{rounds}")
        console.print(t)

    if "4" not in skip:
        t = Table(title=f"4. completeness: default explore, {args.seeds} seeds per variant")
        for c in ("variant", "DPOR (2 CPUs x 2, 2 jobs)", "default search (2 x 2): kinds",
                  "= DPOR's", "same set every seed", "median s to last kind", "max"):  # fmt: skip
            t.add_column(c)
        for variant in args.variants:
            t0 = time.monotonic()
            proof = api.explore(
                variant, strategy="dpor", budget=args.proof_cap, jobs=2, minimize=False
            )
            proof_s = time.monotonic() - t0
            claim = proof.raw.explore.claim if proof.raw.explore else "?"
            claim = f"{claim} in {proof_s:.0f} s"
            times, sets = [], []
            for seed in range(args.seeds):
                took, found, _ = last_kind_time(variant, seed)
                times.append(took)
                sets.append(found)
            union = frozenset().union(*sets)
            t.add_row(
                variant,
                f"{','.join(sorted(proof.found))} ({claim})",
                ",".join(sorted(union)),
                "yes" if union == proof.found else "NO",
                "yes" if len(set(sets)) == 1 else f"no ({len(set(sets))} sets)",
                f"{statistics.median(times):.1f}",
                f"{max(times):.1f}",
            )
            console.print(f"  done: {variant}")
        console.print(t)

    if "5" not in skip:
        t = Table(title=f"5. two-step SEAMCALLs: locked, random walk, 1 pinned explorer, "
                  f"{args.seconds:g} s each, {args.repeat} A/B pairs")  # fmt: skip
        for c in ("SEAMCALL", "executions/s", "steps/s", "steps/s vs one-step"):
            t.add_column(c, justify="right")
        got: dict[str, list[tuple[float, float]]] = {"1": [], "2": []}
        try:
            for _ in range(args.repeat):
                for steps in ("1", "2"):
                    os.environ[SEAMCALL_STEPS_ENV] = steps
                    got[steps].append(throughput(args.seconds, 1, True))
        finally:
            os.environ.pop(SEAMCALL_STEPS_ENV, None)
        base = statistics.median(st for _, st in got["1"])
        for steps, label in (("1", "one step"), ("2", "two steps (begin, end)")):
            ex_s = statistics.median(ex for ex, _ in got[steps])
            st_s = statistics.median(st for _, st in got[steps])
            t.add_row(label, f"{ex_s:,.0f}", f"{st_s:,.0f}", f"{st_s / base:.2f}x")
        console.print(t)

    if "6" not in skip:
        t = Table(
            title=f"6. faults: DPOR, {args.fault_jobs} job(s), 2 CPUs x 2 rounds "
            f"(cap {args.fault_cap:g} s)"
        )
        for c in ("variant", "faults", "tree per plan", "branches in one tree", "executions"):
            t.add_column(c)
        for variant in ("locked", "v6"):
            for k in (0, 1, 2):
                cells, counts = [], []
                for how in ("plans", "branch") if k else ("branch",):
                    cell, n = fault_search(variant, k, args.fault_cap, args.fault_jobs, how)
                    cells.append(cell)
                    counts.append(n)
                    console.print(f"  done: {variant} <= {k} faults, {how}: {cell}")
                if not k:
                    cells = [cells[0], cells[0]]
                ratio = f"{counts[-1] / counts[0]:.2f}x" if len(counts) == 2 else ""
                t.add_row(variant, f"<= {k}", *cells, ratio)
        console.print(t)

    if "7" not in skip:
        scale(console, args.scale_cap, args.jobs, args.scale)

    if "8" not in skip:
        dpor_speed(console, args.seconds, floor)

    if "9" not in skip:
        startup(console, args.repeat)
    if "10" not in skip:
        halting(console, args.proof_cap, args.jobs)
    return 0


def session_speed(session: Session, seconds: float, how: str) -> tuple[float, float, float]:
    """(complete executions/s, executions/s, steps/s) in ``session``: ``how`` is "random",
    "dpor" or "dpor+symmetry"; an exhausted DPOR tree starts over."""
    sym = scenario_symmetry(session.scenario, 1) if how == "dpor+symmetry" else None

    def fresh() -> RandomWalk | DPOR:
        return RandomWalk(seed=1) if how == "random" else DPOR(workload_seed=1, symmetry=sym)

    sched = fresh()
    complete = executions = steps = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if not sched.new_execution():
            # Invariant: only a finished tree stops the strategy here (no budget is set).
            assert isinstance(sched, DPOR) and sched.exhausted
            complete += sched.complete_executions
            sched = fresh()
            continue
        steps += len(session.execute(sched).steps)
        executions += 1
    took = time.monotonic() - t0
    complete += sched.complete_executions if isinstance(sched, DPOR) else executions
    return complete / took, executions / took, steps / took


def dpor_speed(console: Console, seconds: float, floor: float) -> None:
    t = Table(
        title=f"8. DPOR speed: locked, 2 CPUs x 2 rounds, 1 pinned session, {seconds:g} s each"
    )
    for c in ("strategy", "complete executions/s", "executions/s", "steps/s", "us/step",
              "vs floor", "us/step vs random walk"):  # fmt: skip
        t.add_column(c, justify="right")
    with Session(Scenario("locked"), core_for(0)) as session:
        rows = [(how, *session_speed(session, seconds, how))
                for how in ("random", "dpor", "dpor+symmetry")]  # fmt: skip
    walk_us = 1e6 / rows[0][3]
    for how, complete, ex_s, st_s in rows:
        us = 1e6 / st_s
        t.add_row(how, f"{complete:,.0f}", f"{ex_s:,.0f}", f"{st_s:,.0f}", f"{us:.1f}",
                  f"{us / floor:.1f}x", f"{us / walk_us:.2f}x")  # fmt: skip
    console.print(t)
    console.print("target: >= 1,000 complete executions/s per core for dpor on locked 2 x 2")


def fault_search(variant: str, k: int, cap: float, jobs: int, how: str) -> tuple[str, int]:
    """(cell text, executions) of DPOR with <= k faults of every kind; ``how``: "plans"
    (a tree per plan) or "branch" (outcomes as branches in one tree)."""
    t0 = time.monotonic()
    os.environ[FAULT_SEARCH_ENV] = how
    try:
        r = api.explore(
            variant, strategy="dpor", budget=cap, jobs=jobs, minimize=False, seed=1,
            faults="*.busy=0.5,alloc.fail=0.5" if k else "none", max_faults=k,
        )  # fmt: skip
    finally:
        os.environ.pop(FAULT_SEARCH_ENV, None)
    e = r.raw.explore
    assert e is not None
    took = time.monotonic() - t0
    verdict = "clean" if r.clean else ",".join(sorted(r.found))
    return f"{e.executions:,} ex, {took:.1f} s, {e.claim}, {verdict}", e.executions


def _cli_seconds(cpus: int, rounds: int, env: dict[str, str]) -> float:
    """Wall seconds of one explore command in a fresh interpreter (it must verify)."""
    cmd = [sys.executable, "-m", "shmpamt", "explore", "--variant", "v6", "--strategy", "dpor",
           "--jobs", "2", "--cpus", str(cpus), "--rounds", str(rounds), "--faults", "none",
           "--db", "off", "--seed", "1", "--no-minimize", "--budget", "600"]  # fmt: skip
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    if out.returncode != 0 or "verified" not in out.stdout:
        raise SystemExit(f"9: {' '.join(cmd[1:])} did not verify:\n{out.stdout}{out.stderr}")
    return took


def startup(console: Console, repeat: int) -> None:
    package = Path(api.__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="shmpamt-bench-pyc-") as tmp:
        cached, source = Path(tmp, "cached"), Path(tmp, "source")
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        warm = {**base, "PYTHONPYCACHEPREFIX": str(cached)}
        for cpus, rounds in ((1, 1), (2, 2)):  # fills the cache with what either imports
            _cli_seconds(cpus, rounds, warm)
        shutil.copytree(cached, source)
        # the cache mirrors absolute paths: drop shmpamt's own entries, keep the rest
        shutil.rmtree(source / package.relative_to(package.anchor), ignore_errors=True)
        envs = {
            "bytecode cached": {**warm, "PYTHONDONTWRITEBYTECODE": "1"},
            "compiled at each start": {**base, "PYTHONPYCACHEPREFIX": str(source),
                                       "PYTHONDONTWRITEBYTECODE": "1"},
        }  # fmt: skip
        got: dict[tuple[str, int], list[float]] = {}
        for _ in range(repeat):
            for label, env in envs.items():
                for cpus, rounds in ((1, 1), (2, 2)):
                    got.setdefault((label, cpus), []).append(_cli_seconds(cpus, rounds, env))
    t = Table(title=f"9. start-up: `shmpamt explore --variant v6 --strategy dpor --jobs 2`, "
              f"median of {repeat}")  # fmt: skip
    for c in ("shmpamt's bytecode", "1 x 1 s", "2 x 2 s", "2 x 2 vs cached"):
        t.add_column(c, justify="right")
    best = statistics.median(got[("bytecode cached", 2)])
    for label in envs:
        one, two = (statistics.median(got[(label, c)]) for c in (1, 2))
        t.add_row(label, f"{one:.2f}", f"{two:.2f}", f"{two / best:.2f}x")
    console.print(t)
    console.print("target: v6 2 x 2 within 2 s with 2 jobs")


SCALE = [
    *((v, c, r, g) for v in ("v6", "locked") for c, r, g in ((3, 2, 1), (4, 1, 1), (2, 3, 1),
                                                             (3, 1, 2))),
    *((v, 2, 2, 1) for v in BUGGY),
]  # fmt: skip


def dpor_run(
    variant: str,
    cpus: int,
    rounds: int,
    ranges: int,
    cap: float,
    jobs: int,
    symmetry: bool,
    halt: bool = False,
) -> tuple[str, float, int, frozenset[str]]:
    """(cell, seconds, executions, kinds) of one DPOR search."""
    t0 = time.monotonic()
    r = api.explore(
        variant, strategy="dpor", cpus=cpus, rounds=rounds, ranges=ranges, budget=cap,
        jobs=jobs, minimize=False, seed=1, symmetry=symmetry, halt_at_violation=halt,
        faults="none", db=None,
    )  # fmt: skip
    took = time.monotonic() - t0
    e = r.raw.explore
    assert e is not None
    claim = e.claim
    if claim == "sampled" and e.estimate is not None:
        claim = f"cap, ~{e.estimate.share:.0%} ({e.estimate.executions:,} ex est.)"
    return f"{e.executions:,} ex, {took:.1f} s, {claim}", took, e.executions, r.found


def scale(console: Console, cap: float, jobs: int, only: list[str] | None) -> None:
    t = Table(title=f"7. scale: DPOR before and with symmetry, {jobs} jobs, cap {cap:g} s")
    for c in ("variant", "scenario", "dpor (no symmetry)", "dpor + symmetry", "executions",
              "seconds", "kinds (same?)"):  # fmt: skip
        t.add_column(c)
    for variant, cpus, rounds, ranges in SCALE:
        if only and f"{variant}:{cpus}x{rounds}x{ranges}" not in only:
            continue
        before = dpor_run(variant, cpus, rounds, ranges, cap, jobs, False)
        after = dpor_run(variant, cpus, rounds, ranges, cap, jobs, True)
        kinds = ",".join(sorted(after[3])) or "-"
        same = "yes" if before[3] == after[3] else f"NO: before {sorted(before[3])}"
        t.add_row(
            variant, f"{cpus} x {rounds}, {ranges} range(s)", before[0], after[0],
            f"{after[2] / max(before[2], 1):.2f}x", f"{after[1] / before[1]:.2f}x",
            f"{kinds} ({same})",
        )  # fmt: skip
        console.print(f"  done: {variant} {cpus}x{rounds}x{ranges}")
    console.print(t)


def halting(console: Console, cap: float, jobs: int) -> None:
    t = Table(title=f"10. halting at the first violation: 2 x 2, {jobs} jobs, cap {cap:g} s")
    for c in ("variant", "full search", "halting", "executions", "seconds", "kinds (same?)"):
        t.add_column(c)
    for variant in BUGGY:
        full = dpor_run(variant, 2, 2, 1, cap, jobs, True)
        halted = dpor_run(variant, 2, 2, 1, cap, jobs, True, halt=True)
        same = "yes" if full[3] == halted[3] else f"NO: full {sorted(full[3])}"
        t.add_row(
            variant, full[0], halted[0], f"{halted[2] / max(full[2], 1):.2f}x",
            f"{halted[1] / full[1]:.2f}x", f"{','.join(sorted(halted[3])) or '-'} ({same})",
        )  # fmt: skip
        console.print(f"  done: {variant}")
    console.print(t)


if __name__ == "__main__":
    posix_ipc  # noqa: B018  (the floor uses the same semaphores the rig does)
    sys.exit(main())
