#!/usr/bin/env python3
"""Where a pinned explorer's time goes: CPU time per step of each process, and hand-offs.

One explorer (controller, its CPU processes and the daemon on one core) runs a
strategy for a while; the processes' user and system times are read from
``/proc/PID/stat`` before and after, so the shares are of real CPU time, not of
wall time spent waiting. Steps per hand-off says how many steps a CPU takes each
time it is woken (by the controller or, in a stream, by another CPU); steps per
controller grant how many steps each wake-up of the controller covers, on
average (see docs/explore.md, "Budgeted grants" and "Streams").

    python tools/profile_explore.py [--variant locked] [--strategy random] [--seconds 8]
                                    [--core 0] [--stepwise]
"""

from __future__ import annotations

import argparse
import os
import time

from rich.console import Console
from rich.table import Table

from shmpamt.config import Scenario
from shmpamt.explorer.session import Session
from shmpamt.schedulers.registry import make_scheduler

TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="locked")
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--core", type=int, default=sorted(os.sched_getaffinity(0))[0])
    ap.add_argument("--stepwise", action="store_true", help="one hand-off per step (no budgets)")
    args = ap.parse_args()
    with Session(Scenario(args.variant), args.core, batch=not args.stepwise) as s:
        sched = make_scheduler(args.strategy, seed=1, depth=3, preemptions=None)
        for _ in range(50):  # warm up: first executions pay imports and caches
            sched.new_execution()
            s.execute(sched)
        pids = {f"cpu {i}": p.pid for i, p in enumerate(s.fleet.procs) if p.pid}
        pids["daemon"] = s.s.module.pid
        before = {k: cpu_times(v) for k, v in pids.items()}
        me0, handoffs0, wakeups0 = os.times(), s.handoffs, s.wakeups
        t0 = time.perf_counter()
        executions = steps = 0
        while time.perf_counter() - t0 < args.seconds and sched.new_execution():
            steps += len(s.execute(sched).steps)
            executions += 1
        wall = time.perf_counter() - t0
        me1, handoffs, wakeups = os.times(), s.handoffs - handoffs0, s.wakeups - wakeups0
        after = {k: cpu_times(v) for k, v in pids.items()}
    used = {"controller": (me1.user - me0.user, me1.system - me0.system)}
    used |= {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in pids}
    total = sum(u + y for u, y in used.values())
    console = Console(width=120)
    console.print(
        f"{args.variant}, {args.strategy}, core {args.core}: {executions / wall:,.0f} "
        f"executions/s, {steps / wall:,.0f} steps/s, {steps / max(handoffs, 1):.2f} steps "
        f"per hand-off, {steps / max(wakeups, 1):.2f} per controller grant, "
        f"{total / steps * 1e6:.1f} us of CPU time per step"
    )
    t = Table(title="CPU time per step")
    for c in ("process", "user us", "system us", "share"):
        t.add_column(c, justify="right")
    for k, (u, y) in used.items():
        t.add_row(k, f"{u / steps * 1e6:.1f}", f"{y / steps * 1e6:.1f}", f"{(u + y) / total:.0%}")
    console.print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
