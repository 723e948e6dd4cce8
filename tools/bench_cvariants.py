#!/usr/bin/env python3
"""C variants vs their Python twins: what compiling the helpers buys.

Prints, in one run, with every ratio against the Python baseline measured in
the same run:

1. get+put pairs/s under free-running stress (4 CPUs on one shared 2 MiB
   range, no hold, no chaos) for ``rfc``/``rfc.c`` and ``locked``/``locked.c``,
   protocol only and with the AUG/RECLAIM SEAMCALLs in between;
2. the same fast path in one process with no runner around it (a warm range:
   get = one successful inc_not_zero, put = one non-final dec_and_test);
3. the cost of one ``atomic_inc_not_zero``: via ``Kernel`` from Python, and
   from C through the variant context with no hook and with an empty hook.

    python tools/bench_cvariants.py [--seconds 4] [--cpus 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_stress import pairs_per_second  # the same windowed rate, measured the same way
from rich.console import Console
from rich.table import Table

from shmpamt import tdx
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.kernel import POOL_BASE, Kernel, page_hpa
from shmpamt.machine.lock import PamtLock
from shmpamt.variants.registry import load_variant

LOOP = 10_000  # primitives per call of the C micro-benchmark


class _Pool:
    def __init__(self) -> None:
        self.next = 0

    def alloc(self, cpu: int) -> int | None:
        self.next += 1
        return POOL_BASE + self.next * tdx.PAGE_SIZE

    def free(self, cpu: int, hpa: int) -> None:
        return None

    def index(self, hpa: int) -> int:
        return (hpa - POOL_BASE) // tdx.PAGE_SIZE if hpa >= POOL_BASE else -1


class _Module:
    """Accepts every SEAMCALL (REMOVE hands back two pool pages)."""

    def call(self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> tuple[int, int, int, int]:
        return (0, 0, POOL_BASE, POOL_BASE + tdx.PAGE_SIZE)


class _EmptyHook:
    def before(self, op: str, target: int) -> None:
        return None

    def after(self, op: str, target: int, result: int) -> None:
        return None


def _best(fn: Callable[[], None], n: int, repeat: int = 5) -> float:
    """Seconds per operation: best of ``repeat`` timings of ``fn`` doing ``n`` operations."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n


def in_process(rc: RefcountArray, lock: PamtLock) -> dict[str, float]:
    """Seconds per fast-path get+put pair, and per atomic_inc_not_zero, by path."""
    out: dict[str, float] = {}
    pairs = 20_000
    hpa = page_hpa(0, 0)
    for name in ("rfc", "rfc.c"):
        v = load_variant(name)()
        k = Kernel(0, rc, lock, _Pool(), _Module())
        assert v.tdx_pamt_get(k, hpa) == 0  # slow path once: the range is now warm

        def loop(v: object = v, k: Kernel = k) -> None:
            get, put = v.tdx_pamt_get, v.tdx_pamt_put  # type: ignore[attr-defined]
            for _ in range(pairs):
                get(k, hpa)
                put(k, hpa)

        out[f"pair {name}"] = _best(loop, pairs)
        v.tdx_pamt_put(k, hpa)

    rc.set(0, 1)
    k = Kernel(0, rc, lock, _Pool(), _Module())

    def via_kernel() -> None:
        f = k.atomic_inc_not_zero
        for _ in range(LOOP):
            f(0)

    out["prim Kernel (Python)"] = _best(via_kernel, LOOP)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "inz_loop.c"
        src.write_text(
            "#include <shmpamt/kernel.h>\n"
            f"static int tdx_pamt_get(struct page *page)\n{{\n"
            f"\tfor (int i = 0; i < {LOOP}; i++)\n"
            "\t\tatomic_inc_not_zero(tdx_get_pamt_refcount(page_to_phys(page)));\n"
            "\treturn 0;\n}\nstatic void tdx_pamt_put(struct page *page) { (void)page; }\n"
        )
        v = load_variant(str(src))()
    for label, hook in (("prim C, no hook", None), ("prim C, empty hook", _EmptyHook())):
        kk = Kernel(0, rc, lock, _Pool(), _Module(), hook=hook)
        out[label] = _best(lambda kk=kk: v.tdx_pamt_get(kk, 0) and None, LOOP)
    rc.set(0, 0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per stress measurement")
    ap.add_argument("--cpus", type=int, default=4)
    args = ap.parse_args()
    if args.seconds <= 0 or args.cpus < 1:
        ap.error("values must be positive")
    console = Console()
    console.print(f"C compiler cache: {os.environ.get('SHMPAMT_CACHE_DIR', '~/.cache/shmpamt')}")
    for name in ("rfc.c", "locked.c"):
        load_variant(name)  # compile before timing anything

    for use_page, what in ((False, "get+put only"), (True, "get, AUG, RECLAIM, put")):
        t = Table(title=f"stress pairs/s, {args.cpus} CPUs on one 2 MiB range, no hold: {what}")
        t.add_column("variant")
        t.add_column("pairs/s", justify="right")
        t.add_column("vs Python twin", justify="right")
        for base in ("rfc", "locked"):
            py = pairs_per_second(base, args.cpus, args.seconds, use_page)
            c = pairs_per_second(f"{base}.c", args.cpus, args.seconds, use_page)
            t.add_row(base, f"{py:,.0f}", "1.00x")
            t.add_row(f"{base}.c", f"{c:,.0f}", f"{c / py:.2f}x")
        console.print(t)

    rc = RefcountArray.create(1)
    lock = PamtLock.create()
    try:
        r = in_process(rc, lock)
    finally:
        rc.close()
        lock.close()
    t = Table(title="one process, no runner: fast-path get+put pair (rfc, warm range)")
    t.add_column("path")
    t.add_column("ns/pair", justify="right")
    t.add_column("vs Python", justify="right")
    t.add_row("rfc (Python)", f"{r['pair rfc'] * 1e9:,.0f}", "1.00x")
    t.add_row("rfc.c", f"{r['pair rfc.c'] * 1e9:,.0f}", f"{r['pair rfc'] / r['pair rfc.c']:.2f}x")
    console.print(t)
    t = Table(title="one atomic_inc_not_zero (hardware atomic on the shared word)")
    t.add_column("path")
    t.add_column("ns/op", justify="right")
    t.add_column("vs Kernel", justify="right")
    base = r["prim Kernel (Python)"]
    for label in ("prim Kernel (Python)", "prim C, no hook", "prim C, empty hook"):
        t.add_row(label.removeprefix("prim "), f"{r[label] * 1e9:,.1f}", f"{base / r[label]:.2f}x")
    console.print(t)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
