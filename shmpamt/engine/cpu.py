"""A CPU: one spawned process that attaches to a running system and runs rounds.

Two lives share one shape (attach, run, say how it ended, exit): free-running
(:func:`cpu_main`, loops until told to stop) and explore
(:func:`shmpamt.explorer.cpu.cpu_explore_main`, parks before every primitive and
runs one step per grant), which builds on :func:`run_cpu_process`. Nothing here spawns
a process: :mod:`shmpamt.engine.processes` does.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NoReturn

from shmpamt.engine.system import SystemNames
from shmpamt.engine.workload import (
    Workload,
    free_cache,
    judge_failed_get,
    new_cache,
    one_round,
    pick_page,
)
from shmpamt.errors import LockError
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.chaos import UNIFORM, TargetedChaos, UniformChaos
from shmpamt.machine.children import ignore_sigint
from shmpamt.machine.cpu_board import (
    DELAYS,
    GETS_FAILED,
    INJECTED,
    ITERATIONS,
    STATE,
    STATE_DONE,
    STATE_FAILED,
    STATE_RUNNING,
    WARNINGS,
    CpuBoard,
)
from shmpamt.machine.kernel import Hook, Kernel
from shmpamt.machine.lock import PamtLock
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import SeamcallError, SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.faults import FaultPlan
from shmpamt.variants.base import CachedPamtVariant, PamtVariant
from shmpamt.variants.cvariant import CVariant, PairLoop, arm_crash_report
from shmpamt.variants.registry import load_variant

# exit codes of a CPU process: far from the small codes a variant's own os._exit might use,
# so a variant that exits is never mistaken for a failed module or lock
EXIT_OK: Final = 0
EXIT_INTERNAL: Final = 71
EXIT_MODULE: Final = 73
EXIT_LOCK: Final = 74
# C pair loop: pages sampled up front, and pairs per call between stop checks in Python
PAIR_TABLE: Final = 4096
PAIR_BATCH: Final = 1024


@dataclass
class Attached:
    """One CPU process's handles on the running system."""

    refcounts: RefcountArray
    lock: PamtLock
    log: ViolationLog
    pool: PamtPagePool
    port: SeamcallPort
    variant: PamtVariant


def run_cpu_process(
    names: SystemNames,
    cpu: int,
    variant_spec: str,
    workload: Workload,
    body: Callable[[CpuBoard, Attached], None],
) -> NoReturn:
    """The life every CPU process shares: attach, run ``body``, say how it ended, exit."""
    # Ctrl-C goes to the whole process group; the runner decides when CPUs stop.
    ignore_sigint()
    board = CpuBoard.attach(names.board, names.cpus)
    # A C variant that faults cannot raise: its signal handler writes the last words.
    arm_crash_report(board.message_slot(cpu), cpu)
    code = EXIT_INTERNAL
    attached: Attached | None = None
    try:
        log = ViolationLog.attach(names.log)
        attached = Attached(
            refcounts=RefcountArray.attach(names.refcounts),
            lock=PamtLock.attach(names.lock_sem, names.lock_owner, cpu=cpu),
            log=log,
            pool=PamtPagePool.attach(names.pool, log),
            port=SeamcallPort.attach(names.module, cpu, timeout=workload.seamcall_timeout),
            variant=load_variant(variant_spec)(),
        )
        board.set(cpu, STATE, STATE_RUNNING)
        body(board, attached)
        code = EXIT_OK
    except SeamcallError as e:
        # The module failed, not the protocol: leave pamt_lock free so the runner
        # does not mistake this exit for a lock leak.
        if attached is not None and attached.lock.held_by_me():
            with contextlib.suppress(LockError):
                attached.lock.release()
        board.set_message(cpu, str(e))  # already says "cpu N: ..."
        code = EXIT_MODULE
    except LockError as e:
        board.set_message(cpu, f"cpu {cpu}: {e}")
        code = EXIT_LOCK
    except BaseException as e:
        board.set_message(cpu, f"cpu {cpu}: internal error: {type(e).__name__}: {e}")
        code = EXIT_INTERNAL
    finally:
        board.set(cpu, STATE, STATE_DONE if code == EXIT_OK else STATE_FAILED)
    os._exit(code)  # skip atexit: a CPU owns no IPC object, the runner does


def cpu_main(
    names: SystemNames,
    cpu: int,
    variant_spec: str,
    workload: Workload,
    seed: int,
    fault_spec: str,
) -> None:
    """Entry point of a free-running CPU process (spawned)."""

    def loop(board: CpuBoard, a: Attached) -> None:
        faults = FaultPlan.parse(fault_spec, seed)
        rng = random.Random(f"{seed}:cpu{cpu}")
        hook: Hook | None = None
        targeted: TargetedChaos | None = None
        chaos_rng = random.Random(f"{seed}:chaos{cpu}")
        if workload.chaos > 0 and workload.chaos_mode == UNIFORM:
            hook = UniformChaos(chaos_rng, workload.chaos, workload.chaos_us)
        elif workload.chaos > 0:
            hook = targeted = TargetedChaos(
                cpu, board.windows, chaos_rng, workload.chaos, workload.chaos_us
            )
        k = Kernel(
            cpu,
            a.refcounts,
            a.lock,
            a.pool,
            a.port,
            hook=hook,
            alloc_fails=faults.alloc_failer(cpu),
        )
        done = 0
        hold_max = workload.hold_us / 1e6
        held: set[int] = set()  # pages kept because injection refused every RECLAIM
        if (
            isinstance(a.variant, CVariant)
            and not isinstance(a.variant, CachedPamtVariant)
            and hook is None
            and not workload.use_page
            and hold_max == 0
            and not faults.active
        ):
            # Nothing between get and put needs Python: the loop runs in C.
            pages = [pick_page(rng, cpu, names.cpus, workload) for _ in range(PAIR_TABLE)]
            _c_pairs(
                board,
                cpu,
                PairLoop(
                    a.variant,
                    k,
                    pages,
                    board.stop_address(),
                    board.address(cpu, ITERATIONS),
                    rng.getrandbits(64),
                ),
                k,
                a.log,
                workload.iterations,
                names.runner,
            )
            return
        epoch = 0
        cache = new_cache(a.variant)
        while not board.stopping():
            if cache is not None and board.requested_epoch() != epoch:
                # A fresh start judges quiescence: cached pages must be back by then.
                free_cache(k, a.variant, cache)
            epoch = board.pause_if_asked(cpu, epoch, names.runner)
            if workload.iterations and done >= workload.iterations:
                break
            hpa = pick_page(rng, cpu, names.cpus, workload)
            if hpa in held:
                done += 1
                time.sleep(0.001)  # every page may be held: do not spin
                continue
            hold = rng.random() * hold_max
            if not one_round(k, a.variant, hpa, hold, a.log, workload.use_page, held, cache):
                board.inc(cpu, GETS_FAILED)
            done += 1
            board.inc(cpu, ITERATIONS)
            board.set(cpu, INJECTED, k.injected)
            board.set(cpu, WARNINGS, k.warnings)
            if targeted is not None:
                board.set(cpu, DELAYS, targeted.delays)
        # tdx_vcpu_free(): the CPU's cached pages go back before it stops.
        free_cache(k, a.variant, cache)

    run_cpu_process(names, cpu, variant_spec, workload, loop)


def _c_pairs(
    board: CpuBoard,
    cpu: int,
    loop: PairLoop,
    k: Kernel,
    log: ViolationLog,
    limit: int,
    runner: int,
) -> None:
    """Run a C variant's pairs in C until stopped or ``limit`` (0: none) rounds ran."""
    done = 0
    epoch = 0
    while not board.stopping():
        epoch = board.pause_if_asked(cpu, epoch, runner)
        n = PAIR_BATCH if not limit else min(PAIR_BATCH, limit - done)
        if n <= 0:
            break
        before = k.injected
        pairs, err, page = loop.run(n)
        done += pairs
        if err:
            judge_failed_get(k, log, page, err, before)
            board.inc(cpu, GETS_FAILED)
            board.inc(cpu, ITERATIONS)
            done += 1
        board.set(cpu, WARNINGS, k.warnings)
