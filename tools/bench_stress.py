#!/usr/bin/env python3
"""Free-running stress: throughput of the lock-free fast path, and time to first violation.

Prints, in one run: get+put pairs per second of ``locked`` vs ``rfc`` for 1, 2
and 4 CPUs sharing one 2 MiB range (the lock-free fast path should win once
several CPUs share a range) — once for the protocol alone (get then put) and
once with the AUG/RECLAIM SEAMCALLs in between, whose two daemon round trips
dominate the pair — and for each built-in variant the median wall time to the
first violation over N seeds (``--chaos``; capped).

    python tools/bench_stress.py [--seconds 4] [--seeds 5] [--cap 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from rich.console import Console
from rich.table import Table

from shmpamt.config import StressConfig
from shmpamt.engine.stress import StressProgress as Progress
from shmpamt.engine.stress import run_stress
from shmpamt.variants.registry import BUILTIN


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cap", type=float, default=20.0, help="seconds per detection run")
    args = ap.parse_args()
    if args.seconds <= 0 or args.seeds < 1 or args.cap <= 0:
        ap.error("all values must be positive")
    console = Console()

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
