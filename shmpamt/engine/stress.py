"""Free-running stress: the CPUs run in parallel until the duration or their iterations end.

The verdict comes from the generic invariants only: what the daemon and the
page pool logged while the run went on, then the quiescence checks once every
CPU stopped normally. A dead or hung CPU or daemon is an incident, and then
quiescence is not judged (it would raise false alarms).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from shmpamt.config import StressConfig
from shmpamt.engine.cpu import cpu_main
from shmpamt.engine.processes import POLL, Fleet
from shmpamt.engine.system import System, SystemConfig
from shmpamt.engine.workload import Workload
from shmpamt.machine.chaos import TARGETED
from shmpamt.machine.cpu_board import DELAYS, INJECTED, ITERATIONS, PAUSE_POLL, PAUSED, WARNINGS
from shmpamt.machine.seamcall import SeamcallError
from shmpamt.module.faults import FaultPlan
from shmpamt.records.results import (
    STRESS,
    VariantResult,
    WindowCoverage,
    first_examples,
    zero_counts,
)
from shmpamt.variants.registry import load_variant


@dataclass(frozen=True)
class StressProgress:
    variant: str
    operations: int
    violations: int
    elapsed: float
    #: seconds planned (0 = iteration mode)
    total: float
    #: per violation name
    counts: Mapping[str, int] = field(default_factory=dict)
    #: windows hit / seen so far under targeted chaos (None: not targeted)
    coverage: WindowCoverage | None = None


#: how long the runner waits for every CPU to pause at a fresh start
PAUSE_TIMEOUT: Final = 5.0


def _fresh_start(s: System, fleet: Fleet, n: int, should_stop: Callable[[], bool]) -> bool:
    """Pause every CPU between rounds, judge quiescence, reset the state, resume.

    False (nothing judged or reset) if a CPU did not pause in time: it may be
    stuck mid-round (a leaked lock), where quiescence would be a false alarm.
    False too (judged, not reset) if the daemon died before its RESET.
    """
    board = s.board
    board.request_epoch(n)
    try:
        deadline = time.monotonic() + PAUSE_TIMEOUT
        while True:
            # A CPU that exited (its iterations done, or dead) is not mid-round either.
            idle = [
                board.get(c, PAUSED) == n or p.exitcode is not None
                for c, p in enumerate(fleet.procs)
            ]
            if all(idle):
                break
            if time.monotonic() > deadline or should_stop() or fleet.check() is not None:
                return False
            time.sleep(PAUSE_POLL)
        # A CPU that died mid-round leaves its work half done: no quiescence to judge.
        if fleet.died():
            return False
        s.check_quiescent()
        try:
            s.fresh_start()
        except SeamcallError:
            # The daemon died between the pause and its reset: the run's next check
            # reports the death; the reset is simply not done.
            return False
        return True
    finally:
        board.resume(n)


def run_stress(
    config: StressConfig,
    on_progress: Callable[[StressProgress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> VariantResult:
    """Run one variant free-running; the config is already validated."""
    variant = load_variant(config.variant)
    label = variant.name or config.variant
    workload = Workload.for_stress(config)
    layout = SystemConfig(
        cpus=config.cpus,
        ranges=config.ranges,
        pages_per_range=config.pages,
        initial_refcount=variant.initial_refcount,
    )

    def args(s: System, c: int) -> tuple[object, ...]:
        return (s.names, c, config.variant, workload, config.seed, config.faults)

    faults = FaultPlan.parse(config.faults, config.seed)
    targeted = config.chaos > 0 and config.chaos_mode == TARGETED
    t0 = time.monotonic()
    # Fresh starts need every CPU idle between rounds; a page injection kept is never idle.
    epochs = config.epoch > 0 and not faults.active
    starts = 0
    gave_up = False
    next_epoch = t0 + config.epoch
    with Fleet.start(layout, cpu_main, args, faults, should_stop=should_stop) as fleet:
        s = fleet.system
        try:
            while True:
                time.sleep(POLL)
                elapsed = time.monotonic() - t0
                if on_progress is not None:
                    counts = s.log.counts()
                    on_progress(
                        StressProgress(
                            label,
                            s.board.total(ITERATIONS),
                            sum(counts.values()),
                            elapsed,
                            config.seconds,
                            counts,
                            s.board.windows.summary(s.board.total(DELAYS)) if targeted else None,
                        )
                    )
                if should_stop() or (config.duration and elapsed >= config.duration):
                    break
                if fleet.check() is not None or fleet.all_exited():
                    break  # something died; or (iteration mode) every CPU finished
                if epochs and time.monotonic() >= next_epoch:
                    if _fresh_start(s, fleet, starts + 1, should_stop):
                        starts += 1
                    else:
                        # A CPU did not pause (or the daemon died): judge quiescence at the
                        # end only.
                        epochs = False
                        gave_up = not should_stop() and not fleet.died()
                    next_epoch = time.monotonic() + config.epoch
        finally:
            s.board.stop()
            fleet.join()
        elapsed = time.monotonic() - t0
        if not s.module.alive() and not any("module" in i for i in fleet.incidents):
            fleet.incidents.append("the TDX module daemon died")
        if fleet.crashed():
            # Quiescence is unknowable with a CPU gone mid-operation: checking it would
            # raise false alarms. Only the lock (a dead holder) is still judged.
            s.check_lock()
            quiescent = False
        else:
            s.check_quiescent()
            quiescent = True
        if s.board.total(ITERATIONS) == 0 and not fleet.incidents:
            # Nothing ran (a duration shorter than start-up): that is no evidence of "clean".
            fleet.incidents.append("no CPU completed a get/put round: nothing was tested")
        counts = zero_counts() | s.log.counts()
        records = s.log.records()
        coverage = s.board.windows.summary(s.board.total(DELAYS)) if targeted else None
        injected = max(s.board.total(INJECTED), s.module.statistics().injected_total)
        notes: tuple[str, ...] = (
            (f"{starts} fresh starts (every {config.epoch:g} s)",) if starts else ()
        )
        notes += tuple(fleet.notes)
        if gave_up:
            notes += (
                f"fresh starts stopped after {starts}: a CPU did not pause between rounds "
                f"within {PAUSE_TIMEOUT:g} s",
            )
        return VariantResult(
            variant=label,
            mode=STRESS,
            notes=notes,
            seed=config.seed,
            cpus=config.cpus,
            operations=s.board.total(ITERATIONS),
            elapsed_s=elapsed,
            counts=counts,
            examples=first_examples(records),
            incidents=tuple(fleet.incidents),
            faults_injected=injected,
            quiescence_checked=quiescent,
            ignored=config.ignore,
            kernel_warnings=s.board.total(WARNINGS),
            spec=config.variant,
            windows=coverage,
            coverage=str(coverage) if coverage is not None else "",
        )
