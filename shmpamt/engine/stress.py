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

from shmpamt.board import DELAYS, INJECTED, ITERATIONS, WARNINGS
from shmpamt.chaos import TARGETED
from shmpamt.config import StressConfig
from shmpamt.cpu import cpu_main
from shmpamt.engine.processes import POLL, Fleet
from shmpamt.module.faults import FaultPlan
from shmpamt.results import (
    STRESS,
    VariantResult,
    WindowCoverage,
    first_examples,
    zero_counts,
)
from shmpamt.system import System, SystemConfig
from shmpamt.variants.registry import load_variant
from shmpamt.workload import Workload


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
    with Fleet.start(layout, cpu_main, args, faults) as fleet:
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
                if fleet.all_exited() or fleet.check() is not None:
                    break  # iteration mode: every CPU finished; or something died
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
        return VariantResult(
            variant=label,
            mode=STRESS,
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
