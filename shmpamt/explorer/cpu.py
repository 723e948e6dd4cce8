"""A CPU process's life under controlled scheduling: one execution per start
command, every primitive through the explore hook, until told to exit."""

from __future__ import annotations

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
            cache = new_cache(a.variant)
            try:
                for _ in range(rounds):
                    hpa = pick_page(rng, cpu, names.cpus, workload)
                    one_round(k, a.variant, hpa, 0.0, a.log, cache=cache)
                    board.inc(cpu, ITERATIONS)
                free_cache(k, a.variant, cache)
            except Aborted as stop:
                if stop.cmd == CMD_EXIT:
                    return
                state = IDLE
            sb.set(cpu, W_STATE, state)

    run_cpu_process(names, cpu, variant_spec, workload, loop)
