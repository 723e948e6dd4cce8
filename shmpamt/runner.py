"""Free-running stress: spawn the module and N CPUs, watch them, judge the run.

The runner never trusts that a process is alive: every wait is bounded, a
dead or hung CPU or daemon becomes an *incident* in the report, and the
system is torn down (all IPC objects removed) whatever happened.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from shmpamt.cpu import (
    EXIT_LOCK,
    EXIT_MODULE,
    EXIT_OK,
    INJECTED,
    ITERATIONS,
    WARNINGS,
    Workload,
    cpu_main,
)
from shmpamt.invariants import VIOLATIONS
from shmpamt.ipc import pid_alive, sigint_ignored_in_children
from shmpamt.report import VariantResult, first_examples
from shmpamt.system import System, SystemConfig

POLL: Final = 0.1
JOIN_GRACE: Final = 10.0  # seconds a CPU gets to finish its round after "stop"


@dataclass(frozen=True)
class Progress:
    variant: str
    operations: int
    violations: int
    elapsed: float
    total: float  # seconds planned (0 = iteration mode)
    counts: Mapping[str, int] = field(default_factory=dict)  # per violation name


ProgressFn = Callable[[Progress], None]


def stress_setup(
    cpus: int,
    ranges: int,
    pages_per_range: int | None,
    hot: float,
    hold_us: int,
    iterations: int | None,
    chaos: float,
) -> tuple[Workload, SystemConfig]:
    """The one place a stress run's defaults live; the CLI and the library share it."""
    ppr = pages_per_range if pages_per_range is not None else min(512, 2 * cpus)
    workload = Workload(
        ranges=ranges,
        pages_per_range=ppr,
        hot=hot,
        hold_us=hold_us,
        iterations=iterations or 0,
        chaos=chaos,
    )
    return workload, SystemConfig(cpus=cpus, ranges=ranges, pages_per_range=ppr)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return {
        EXIT_MODULE: "stopped: the TDX module daemon failed",
        EXIT_LOCK: "stopped: pamt_lock failed",
    }.get(code, f"exited with status {code}")


def run_stress(
    variant_spec: str,
    config: SystemConfig,
    workload: Workload,
    duration: float,
    seed: int,
    fault_spec: str = "",
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> VariantResult:
    """Run one variant free-running until ``duration`` or ``workload.iterations``."""
    from shmpamt.module.faults import FaultPlan
    from shmpamt.variants.registry import load_variant

    variant = load_variant(variant_spec)
    workload.validate(config.cpus)
    if not duration >= 0:  # also refuses NaN
        raise ValueError("--duration must be a number >= 0")
    if not duration and not workload.iterations:
        raise ValueError("give a --duration or a number of --iterations")
    faults = FaultPlan.parse(fault_spec, seed)
    config = replace(config, initial_refcount=variant.initial_refcount)
    label = variant.name or variant_spec
    ctx = mp.get_context("spawn")
    incidents: list[str] = []
    with System.start(config, faults) as s:
        procs = [
            ctx.Process(
                target=cpu_main,
                args=(s.names, c, variant_spec, workload, seed, fault_spec),
                name=f"shmpamt-cpu{c}",
                daemon=True,
            )
            for c in range(config.cpus)
        ]
        t0 = time.monotonic()
        try:
            with sigint_ignored_in_children():
                for p in procs:
                    p.start()
            _watch(s, procs, label, duration, workload, t0, incidents, on_progress, should_stop)
        finally:
            s.board.stop()
            _join_all(s, procs, incidents)
        elapsed = time.monotonic() - t0
        module_ok = s.module.alive()
        if not module_ok and not any("module" in i for i in incidents):
            incidents.append("the TDX module daemon died")
        crashed = any(p.exitcode != EXIT_OK for p in procs)
        if crashed or not module_ok:
            # Quiescence is unknowable with a CPU gone mid-operation: checking it would
            # raise false alarms. Only the lock (a dead holder) is still judged.
            s.check_lock()
            quiescent = False
        else:
            s.check_quiescent()
            quiescent = True
        counts = s.log.counts()
        records = s.log.records()
        ops = s.board.total(ITERATIONS)
        injected = s.board.total(INJECTED)
        warnings = s.board.total(WARNINGS)
        module_stats = s.module.statistics()
        injected_module = int(getattr(module_stats, "injected_total", 0))
    return VariantResult(
        variant=label,
        mode="stress",
        seed=seed,
        cpus=config.cpus,
        operations=ops,
        elapsed_s=elapsed,
        counts={n: counts.get(n, 0) for n in VIOLATIONS},
        examples=first_examples(records),
        incidents=tuple(incidents),
        faults_injected=max(injected, injected_module),
        quiescence_checked=quiescent,
        extra={"kernel_warnings": warnings},  # pr_err/WARN_ON_ONCE the variant printed
    )


def _watch(
    s: System,
    procs: Sequence[mp.process.BaseProcess],
    label: str,
    duration: float,
    workload: Workload,
    t0: float,
    incidents: list[str],
    on_progress: ProgressFn | None,
    should_stop: Callable[[], bool],
) -> None:
    while True:
        time.sleep(POLL)
        elapsed = time.monotonic() - t0
        if on_progress is not None:
            on_progress(
                Progress(
                    label,
                    s.board.total(ITERATIONS),
                    s.log.total(),
                    elapsed,
                    duration,
                    s.log.counts(),
                )
            )
        if should_stop():
            return
        if duration and elapsed >= duration:
            return
        if all(p.exitcode is not None for p in procs):
            return  # iteration mode: every CPU finished (or died)
        # The most specific account first: a dead lock holder also shows up as a
        # dead CPU and as its waiters giving up.
        pid, cpu = s.lock.holder()
        if pid and not pid_alive(pid):
            incidents.append(f"cpu {cpu} (pid {pid}) died holding pamt_lock")
            return
        if not s.module.alive():
            incidents.append("the TDX module daemon died mid-run")
            return
        for c, p in enumerate(procs):
            if p.exitcode == EXIT_MODULE and s.module.alive():
                # The daemon is hung (alive, not answering): every other CPU would wait
                # out its own timeout in turn. Kill it so they all see ModuleDied now.
                s.module.stop(timeout=0.5)
                incidents.append(
                    f"the TDX module daemon hung and was killed ({s.board.message(c)})"
                )
                return
            if p.exitcode is not None and p.exitcode != EXIT_OK:
                msg = s.board.message(c)
                incidents.append(
                    f"cpu {c} {_describe_exit(p.exitcode)} mid-run" + (f" ({msg})" if msg else "")
                )
                return


def _join_all(s: System, procs: Sequence[mp.process.BaseProcess], incidents: list[str]) -> None:
    deadline = time.monotonic() + JOIN_GRACE
    for c, p in enumerate(procs):
        if p.pid is None:
            continue
        # A CPU blocked behind a dead lock holder notices it itself (LockHolderDied);
        # record the dead holder first so the lock is free for the others to finish.
        while p.exitcode is None and time.monotonic() < deadline:
            pid, _ = s.lock.holder()
            if pid and not pid_alive(pid):
                s.check_lock()
            p.join(POLL)
        if p.exitcode is None:
            p.kill()
            p.join(5)
            incidents.append(f"cpu {c} did not stop within {JOIN_GRACE:.0f} s and was killed")
    for c, p in enumerate(procs):
        if p.exitcode not in (EXIT_OK, None) and not any(f"cpu {c} " in i for i in incidents):
            msg = s.board.message(c)
            incidents.append(f"cpu {c} {_describe_exit(p.exitcode)}" + (f": {msg}" if msg else ""))
