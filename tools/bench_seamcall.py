#!/usr/bin/env python3
"""Round trip of a no-op SEAMCALL against a bare semaphore ping-pong, measured in one run.

The floor of any cross-process call is waking another process and being woken
back: a posix_ipc semaphore ping-pong between two spawned processes. The
SEAMCALL transport should add almost nothing to it. Target (issue 4): median
SEAMCALL round trip at most 1.5x the bare ping-pong median. The two are
measured in alternating rounds so that a noisy neighbour hits both alike.
Exit status 1 if the target is missed.

    python tools/bench_seamcall.py [--calls 5000] [--rounds 6] [--warmup 500]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator

import posix_ipc
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from shmpamt import tdx
from shmpamt.machine.ipc import (
    create_semaphore,
    make_name,
    new_token,
    open_semaphore,
    remove_semaphore,
)
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import TdxModule
from shmpamt.module.faults import FaultPlan

TARGET = 1.5


def _echo(ping_name: str, pong_name: str) -> None:
    """The peer of the bare ping-pong: answer every ping until killed (it owns no IPC object)."""
    ping = open_semaphore(ping_name)
    pong = open_semaphore(pong_name)
    while True:
        ping.acquire()
        pong.release()


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, 10_000_000_000, 3)  # ns, 1 ns .. 10 s


def measure_pingpong(
    ping: posix_ipc.Semaphore, pong: posix_ipc.Semaphore, n: int, h: HdrHistogram
) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        ping.release()
        pong.acquire()
        h.record_value(clock() - t0)


def measure_seamcall(port: SeamcallPort, n: int, h: HdrHistogram) -> None:
    clock = time.perf_counter_ns
    call = port.call
    nop = tdx.SHMPAMT_NOP
    for _ in range(n):
        t0 = clock()
        call(nop)
        h.record_value(clock() - t0)


def us(h: HdrHistogram, q: float) -> float:
    return float(h.get_value_at_percentile(q)) / 1000.0


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Run the body (and every process it spawns) on ``cpus``; None = leave placement alone."""
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def placements(which: str) -> list[tuple[str, set[int] | None, set[int] | None]]:
    """(name, cpus of the server side, cpus of the client side) to measure."""
    cpus = sorted(os.sched_getaffinity(0))
    out: list[tuple[str, set[int] | None, set[int] | None]] = []
    if which in ("same", "all"):
        out.append(("same core", {cpus[0]}, {cpus[0]}))
    if which in ("split", "all") and len(cpus) > 1:
        out.append(("split cores", {cpus[1]}, {cpus[0]}))
    if which in ("free", "all"):
        out.append(("scheduler's choice", None, None))
    return out


def measure(
    args: argparse.Namespace, server_cpus: set[int] | None, client_cpus: set[int] | None
) -> tuple[HdrHistogram, HdrHistogram]:
    """Bare ping-pong and NOP SEAMCALL histograms, alternating rounds, one placement."""
    token = new_token()
    ctx = mp.get_context("spawn")
    log = ViolationLog.create(capacity=16, token=token)
    pool = PamtPagePool.create(4, log, token)
    ping = create_semaphore(make_name("benchping", token), 0)
    pong = create_semaphore(make_name("benchpong", token), 0)
    peer = None
    bare, seam = _histogram(), _histogram()
    try:
        with pinned(server_cpus):
            module = TdxModule.start(1, 1, 1, pool, log, FaultPlan.none(), token)
            peer = ctx.Process(target=_echo, args=(ping.name, pong.name), daemon=True)
            peer.start()
        with module, pinned(client_cpus):
            port = SeamcallPort.attach(module.names, 0)
            try:
                measure_pingpong(ping, pong, args.warmup, _histogram())
                measure_seamcall(port, args.warmup, _histogram())
                for _ in range(args.rounds):
                    measure_pingpong(ping, pong, args.calls, bare)
                    measure_seamcall(port, args.calls, seam)
            finally:
                port.close()
            calls = module.statistics().calls_of(tdx.SHMPAMT_NOP)
    finally:
        if peer is not None:
            peer.kill()
            peer.join()
        remove_semaphore(ping, owner=True)
        remove_semaphore(pong, owner=True)
        pool.close()
        log.close()
    # Invariant: every timed NOP reached the module (the numbers measure real round trips).
    expected = args.calls * args.rounds + args.warmup
    assert calls == expected, f"module saw {calls} NOPs, expected {expected}"
    return bare, seam


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000, help="round trips per round and kind")
    ap.add_argument("--rounds", type=int, default=6, help="alternating measurement rounds")
    ap.add_argument("--warmup", type=int, default=500, help="untimed round trips per kind")
    ap.add_argument(
        "--placement",
        choices=("all", "same", "split", "free"),
        default="all",
        help="caller and callee on one core, on two cores, or wherever the scheduler puts them",
    )
    args = ap.parse_args()
    if args.calls < 1 or args.rounds < 1 or args.warmup < 0:
        ap.error("--calls and --rounds must be >= 1, --warmup >= 0")

    n = args.calls * args.rounds
    print(f"round trips per kind and placement: {n} ({args.rounds} alternating rounds)")
    print(f"{'placement':20}{'kind':30}{'median us':>10}{'p99 us':>10}")
    ok = True
    for name, server_cpus, client_cpus in placements(args.placement):
        bare, seam = measure(args, server_cpus, client_cpus)
        ratio = us(seam, 50) / us(bare, 50)
        ratio99 = us(seam, 99) / us(bare, 99)
        print(f"{name:20}{'bare posix_ipc ping-pong':30}{us(bare, 50):>10.1f}{us(bare, 99):>10.1f}")
        print(f"{'':20}{'SEAMCALL NOP (transport)':30}{us(seam, 50):>10.1f}{us(seam, 99):>10.1f}")
        print(f"{'':20}{'ratio':30}{ratio:>9.2f}x{ratio99:>9.2f}x")
        if server_cpus is not None:  # the scheduler's choice may differ between the two kinds
            ok = ok and ratio <= TARGET
    print(f"target: median SEAMCALL <= {TARGET}x median ping-pong at a fixed placement")
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
