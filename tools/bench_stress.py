#!/usr/bin/env python3
"""Free-running stress: throughput of the lock-free fast path, and time to first violation.

Prints, in one run: get+put pairs per second of ``locked`` vs ``rfc`` for 1, 2
and 4 CPUs sharing one 2 MiB range (the lock-free fast path should win once
several CPUs share a range) — once for the protocol alone (get then put) and
once with the AUG/RECLAIM SEAMCALLs in between, whose two daemon round trips
dominate the pair — and for each built-in variant the median wall time to the
first violation over N seeds (``--chaos``; capped).

    python tools/bench_stress.py [--seconds 4] [--seeds 5] [--cap 20]

``--stability`` measures instead whether the default campaign's verdict holds
from run to run (issue 18): ten default campaigns (``shmpamt stress --seed S``,
stress + explore per variant) with ten seeds, the kind set of every built-in
in each and whether they agree, against ``explore --strategy dpor`` where DPOR
finishes in ``--dpor-budget`` seconds (else the union over the runs, said so);
then kai's use_without_pamt by free-running stress alone (15 s, chaos, 3 CPUs,
one range) in how many of N runs, targeted vs uniform chaos; and locked/v6
clean in every run with chaos and with faults.

    python tools/bench_stress.py --stability [--campaigns 10] [--kai-runs 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from shmpamt import api
from shmpamt.config import ExploreConfig, StressConfig
from shmpamt.engine.stress import StressProgress as Progress
from shmpamt.engine.stress import run_stress
from shmpamt.records.results import VERIFIED
from shmpamt.variants.registry import BUILTIN

FAULTS = "add.busy=0.1,remove.busy=0.1,aug.delay=0.2:0.001,alloc.fail=0.02"


def pairs_per_second(variant: str, cpus: int, seconds: float, use_page: bool) -> float:
    """Rate over a window that starts once every CPU is running (spawn time excluded)."""
    samples: list[tuple[float, int]] = []

    def tick(p: Progress) -> None:
        samples.append((p.elapsed, p.operations))

    warm = 1.5
    cfg = StressConfig(
        variant, cpus=cpus, ranges=1, pages_per_range=cpus, hold_us=0, use_page=use_page,
        duration=seconds + warm, seed=1,
    )  # fmt: skip
    run_stress(cfg, on_progress=tick)
    window = [(t, n) for t, n in samples if t >= warm]
    (t0, n0), (t1, n1) = window[0], window[-1]
    return (n1 - n0) / (t1 - t0)


def first_violation(variant: str, seed: int, cap: float) -> tuple[float | None, float | None]:
    """Seconds to the first violation of any kind, and of any kind but add_present."""
    first: list[float] = []
    serious: list[float] = []

    def tick(p: Progress) -> None:
        if p.violations and not first:
            first.append(p.elapsed)
        if not serious and any(n for k, n in p.counts.items() if k != "add_present"):
            serious.append(p.elapsed)

    cfg = StressConfig(
        variant, cpus=4, ranges=2, pages_per_range=8, hold_us=50, chaos=0.3, duration=cap, seed=seed
    )
    res = run_stress(cfg, on_progress=tick, should_stop=lambda: bool(serious))
    # Some races only show in the end-of-run quiescence checks (a refcount left too high).
    if not first and res.found:
        first.append(res.elapsed_s)
    if not serious and set(res.found) - {"add_present"}:
        serious.append(res.elapsed_s)
    return (first[0] if first else None), (serious[0] if serious else None)


def campaign(seed: int, seconds: float | None) -> dict[str, frozenset[str]]:
    """One default campaign, as a user runs it; the merged kind set per variant."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "c.json"
        cmd = [sys.executable, "-m", "shmpamt", "stress", "--seed", str(seed), "--json", str(out)]
        if seconds is not None:
            cmd += ["--duration", str(seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode not in (0, 1) or not out.exists():
            raise SystemExit(f"campaign seed {seed} failed: {proc.stderr.strip()[-400:]}")
        data = json.loads(out.read_text())
    if not data.get("merged"):
        raise SystemExit(f"campaign seed {seed}: no merged verdict ({data.get('error')})")
    return {m["variant"]: frozenset(m["verdict"]) for m in data["merged"]}


def dpor_kinds(variant: str, budget: float) -> tuple[frozenset[str], bool]:
    """DPOR's kind set and whether it finished (a verified claim) within ``budget``."""
    r = api.run(ExploreConfig(variant, strategy="dpor", budget=budget, minimize=False, seed=1))
    done = r.raw.explore is not None and r.raw.explore.claim == VERIFIED
    return frozenset(r.found), done


def _fmt(kinds: frozenset[str]) -> str:
    return ",".join(sorted(k.replace("_", "")[:8] for k in kinds)) or "-"


def stability(args: argparse.Namespace, console: Console) -> None:
    runs = []
    for i in range(args.campaigns):
        runs.append(campaign(1000 + i, args.campaign_seconds))
        console.print(f"campaign {i + 1}/{args.campaigns} (seed {1000 + i}) done")
    variants = list(runs[0])
    t = Table(title=f"default campaign (stress + explore), {args.campaigns} seeds: kind sets")
    for col in ("variant", "agree", "runs (kind set: times)", "reference", "matches"):
        t.add_column(col)
    for v in variants:
        sets = [r.get(v, frozenset()) for r in runs]
        distinct = {s: sets.count(s) for s in sets}
        union = frozenset().union(*sets)
        ref, done = dpor_kinds(v, args.dpor_budget)
        label = "dpor (verified)" if done else "union of runs (dpor did not finish)"
        reference = ref if done else union
        cells = "; ".join(f"{_fmt(s)}: {n}" for s, n in distinct.items())
        agree = "yes" if len(distinct) == 1 else "NO"
        match = f"{sets.count(reference)}/{len(sets)}"
        t.add_row(v, agree, cells, f"{_fmt(reference)} ({label})", match)
    console.print(t)
    console.print("kind abbreviations: first 8 letters without underscores")

    k = Table(
        title=f"kai use_without_pamt by free-running stress alone: {args.kai_runs} runs of "
        f"{args.kai_seconds:g} s, chaos 0.3, 3 CPUs, 1 range"
    )
    for col in ("chaos mode", "found in", "runs"):
        k.add_column(col)
    for mode in ("targeted", "uniform"):
        hits = []
        for seed in range(1, args.kai_runs + 1):
            cfg = StressConfig(
                "kai", cpus=3, ranges=1, duration=args.kai_seconds, chaos=0.3,
                chaos_mode=mode, seed=seed,
            )  # fmt: skip
            hits.append("use_without_pamt" in run_stress(cfg).found)
        k.add_row(mode, f"{sum(hits)}/{len(hits)}", "".join("x" if h else "." for h in hits))
    console.print(k)

    c = Table(title=f"correct variants, {args.clean_runs} seeds x {args.clean_seconds:g} s each")
    for col in ("variant", "chaos (targeted)", "faults", "chaos + faults"):
        c.add_column(col)
    for v in ("locked", "v6"):
        cells = []
        for chaos, faults in ((0.3, ""), (0.0, FAULTS), (0.3, FAULTS)):
            dirty = 0
            for seed in range(1, args.clean_runs + 1):
                cfg = StressConfig(
                    v, cpus=4, duration=args.clean_seconds, chaos=chaos, faults=faults, seed=seed
                )
                res = run_stress(cfg)
                dirty += bool(res.found or res.incidents)
            cells.append(f"clean {args.clean_runs - dirty}/{args.clean_runs}")
        c.add_row(v, *cells)
    console.print(c)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stability", action="store_true", help="issue 18's measurement instead")
    ap.add_argument("--campaigns", type=int, default=10)
    ap.add_argument("--campaign-seconds", type=float, default=None, help="--duration (default: 7)")
    ap.add_argument("--dpor-budget", type=float, default=30.0)
    ap.add_argument("--kai-runs", type=int, default=10)
    ap.add_argument("--kai-seconds", type=float, default=15.0)
    ap.add_argument("--clean-runs", type=int, default=3)
    ap.add_argument("--clean-seconds", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cap", type=float, default=20.0, help="seconds per detection run")
    args = ap.parse_args()
    if args.seconds <= 0 or args.seeds < 1 or args.cap <= 0:
        ap.error("all values must be positive")
    console = Console()
    if args.stability:
        if min(args.campaigns, args.kai_runs, args.clean_runs) < 1:
            ap.error("counts must be positive")
        stability(args, console)
        return 0

    for use_page, what in ((False, "get+put only"), (True, "get, AUG, RECLAIM, put")):
        t = Table(title=f"pairs/s, every CPU on one shared 2 MiB range, no hold: {what}")
        for col in ("cpus", "locked", "rfc", "rfc / locked"):
            t.add_column(col, justify="right")
        for cpus in (1, 2, 4):
            locked = pairs_per_second("locked", cpus, args.seconds, use_page)
            rfc = pairs_per_second("rfc", cpus, args.seconds, use_page)
            t.add_row(str(cpus), f"{locked:,.0f}", f"{rfc:,.0f}", f"{rfc / locked:.2f}x")
        console.print(t)

    d = Table(
        title=f"stress --chaos (4 CPUs, 2 ranges): seconds to the first violation, "
        f"{args.seeds} seeds, cap {args.cap:g} s"
    )
    for col in ("variant", "any kind", "found", "other than add_present", "found"):
        d.add_column(col, justify="right")
    for variant in BUILTIN:
        runs = [first_violation(variant, seed, args.cap) for seed in range(args.seeds)]
        cells: list[str] = []
        for times in ([a for a, _ in runs if a is not None], [b for _, b in runs if b is not None]):
            cells.append(f"{statistics.median(times):.2f}" if times else "-")
            cells.append(f"{len(times)}/{args.seeds}")
        d.add_row(variant, *cells)
    console.print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
