"""A CPU process's life under controlled scheduling: one execution per start
command, every primitive through the explore hook, until told to exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shmpamt.engine.cpu import Attached, run_cpu_process
from shmpamt.engine.system import SystemNames
from shmpamt.engine.workload import Workload, free_cache, new_cache, one_round, pick_page
from shmpamt.explorer.board import (
    CMD_EXIT,
    CMD_START,
    DONE,
    IDLE,
    W_STATE,
    Aborted,
    ExploreBoard,
    ExploreBoardNames,
)
from shmpamt.explorer.hook import ExploreHook, workload_rng
from shmpamt.machine.cpu_board import ITERATIONS, CpuBoard
from shmpamt.machine.kernel import Kernel
from shmpamt.records.execution import GET, PUT
from shmpamt.variants.base import CachedPamtVariant, PamtCache, PamtVariant


def cpu_explore_main(
    names: SystemNames,
    sched: ExploreBoardNames,
    cpu: int,
    variant_spec: str,
    workload: Workload,
    rounds: int,
) -> None:
    """Entry point of a CPU process in explore mode: one step per grant."""

    def loop(board: CpuBoard, a: Attached) -> None:
        sb = ExploreBoard.attach(sched)
        hook = ExploreHook(sb, cpu, a.refcounts, names.runner, a.log, a.lock.is_held)
        try:
            executions(board, a, sb, hook)
        finally:
            hook.close()

    def executions(board: CpuBoard, a: Attached, sb: ExploreBoard, hook: ExploreHook) -> None:
        k = Kernel(cpu, a.refcounts, a.lock, a.pool, a.port, hook=hook)
        variant = marked(a.variant, hook)
        while True:
            cmd, arg = hook.wait_command()
            if cmd == CMD_EXIT:
                return
            if cmd != CMD_START:
                continue  # an abort that reached an idle CPU: nothing to unwind
            rng = workload_rng(arg, cpu)
            k.injected = 0
            state = DONE
            # A fresh cache each execution: the pool reset took back any cached pages.
            cache = new_cache(variant)
            try:
                for _ in range(rounds):
                    hpa = pick_page(rng, cpu, names.cpus, workload)
                    one_round(k, variant, hpa, 0.0, a.log, cache=cache)
                    board.inc(cpu, ITERATIONS)
                free_cache(k, variant, cache)
            except Aborted as stop:
                if stop.cmd == CMD_EXIT:
                    return
                state = IDLE
            sb.set(cpu, W_STATE, state)

    run_cpu_process(names, cpu, variant_spec, workload, loop)


@contextmanager
def _helper(hook: ExploreHook, helper: int) -> Iterator[None]:
    """The steps taken inside belong to one call of ``helper`` (GET or PUT)."""
    hook.enter(helper)
    try:
        yield
    finally:
        hook.leave()


class Marked(PamtVariant):
    """A variant whose get and put tell the hook where they begin and end, so each
    step of the trace knows the helper call it is part of (the race report nests the
    primitives under ``tdx_pamt_get()`` / ``tdx_pamt_put()``). Adds no scheduling point."""

    def __init__(self, variant: PamtVariant, hook: ExploreHook) -> None:
        self._variant = variant
        self._hook = hook

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        with _helper(self._hook, GET):
            return self._variant.tdx_pamt_get(k, page)

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        with _helper(self._hook, PUT):
            self._variant.tdx_pamt_put(k, page)


class MarkedCached(Marked, CachedPamtVariant):
    """:class:`Marked` for a variant whose get takes a PAMT page cache (v6 as posted):
    the cache's top-up and free are marked as the get and put they serve."""

    def __init__(self, variant: CachedPamtVariant, hook: ExploreHook) -> None:
        super().__init__(variant, hook)
        self._cached = variant

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        with _helper(self._hook, GET):
            return self._cached.tdx_pamt_get(k, page, cache)

    def new_pamt_cache(self) -> PamtCache:
        return self._cached.new_pamt_cache()

    def tdx_topup_pamt_cache(self, k: Kernel, cache: PamtCache, npages: int) -> int:
        with _helper(self._hook, GET):
            return self._cached.tdx_topup_pamt_cache(k, cache, npages)

    def tdx_free_pamt_cache(self, k: Kernel, cache: PamtCache) -> None:
        with _helper(self._hook, PUT):
            self._cached.tdx_free_pamt_cache(k, cache)


def marked(variant: PamtVariant, hook: ExploreHook) -> PamtVariant:
    """The variant with its helper calls marked for the trace, in the shape it has."""
    if isinstance(variant, CachedPamtVariant):
        return MarkedCached(variant, hook)
    return Marked(variant, hook)
