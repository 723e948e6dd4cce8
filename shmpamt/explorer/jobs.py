"""Every core searching: ``--jobs N`` explorers, each in its own process on its own core.

Each job is one explorer (:func:`~shmpamt.explorer.search.run_explore`) with
its own IPC objects, its shard of the search (DPOR splits its tree, sampling
strategies their seeds) and its core. Results merge into one report. Any job
that fails, a Ctrl-C, or a lost parent stops every job; each job's own
explorer then tears its system down as it always does.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from typing import Any, Final

from shmpamt.config import ExploreConfig
from shmpamt.errors import RunFailure
from shmpamt.explorer.search import ExploreProgress, run_explore
from shmpamt.machine.children import ignore_sigint, sigint_held
from shmpamt.machine.ipc import no_room
from shmpamt.machine.placement import core_for
from shmpamt.records.estimate import TreeEstimate
from shmpamt.records.results import BOUNDED, SAMPLED, VERIFIED, ExploreStats, Finding, VariantResult

POLL: Final = 0.2
JOIN_GRACE: Final = 30.0  # seconds a job gets to minimise and tear down after "stop"


def run_search(
    config: ExploreConfig,
    on_progress: Callable[[ExploreProgress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> VariantResult:
    """The explore search as configured: one pinned explorer here, or ``jobs`` of them."""
    jobs = config.jobs or 1
    if jobs == 1:
        core = core_for(0) if config.pin else None
        return run_explore(config, on_progress, should_stop, core=core)
    return _run_jobs(config, jobs, on_progress, should_stop)


def _job(
    config: ExploreConfig,
    shard: tuple[int, int],
    core: int | None,
    stop: Any,
    out: Any,
    parent: int,
) -> None:
    """One job's life (a spawned process): search its shard, send the result home."""
    ignore_sigint()  # Ctrl-C reaches the whole process group; the parent stops the jobs
    index = shard[0]

    def tick(p: ExploreProgress) -> None:
        out.put(("progress", index, p))

    def stopping() -> bool:
        return bool(stop.is_set()) or os.getppid() != parent

    try:
        res = run_explore(config, tick, stopping, shard=shard, core=core)
        out.put(("result", index, res))
    except Exception as e:  # the parent reports it; the traceback helps SHMPAMT_DEBUG users
        detail = traceback.format_exc() if os.environ.get("SHMPAMT_DEBUG") else ""
        out.put(("error", index, f"{type(e).__name__}: {e}{detail}"))


def _run_jobs(
    config: ExploreConfig,
    jobs: int,
    on_progress: Callable[[ExploreProgress], None] | None,
    should_stop: Callable[[], bool],
) -> VariantResult:
    ctx = mp.get_context("spawn")
    try:  # multiprocessing keeps their locks as named semaphores in /dev/shm
        stop = ctx.Event()
        out: Any = ctx.Queue()
    except OSError as e:
        raise no_room("the jobs' stop event and result queue", e) or e from None
    procs: list[BaseProcess] = []
    results: dict[int, VariantResult] = {}
    errors: dict[int, str] = {}
    progress: dict[int, ExploreProgress] = {}
    interrupted = False
    try:
        with sigint_held():
            for i in range(jobs):
                core = core_for(i) if config.pin else None
                one = replace(config, jobs=1, executions=_share(config.executions, i, jobs))
                job = ctx.Process(
                    target=_job,
                    args=(one, (i, jobs), core, stop, out, os.getpid()),
                    name=f"shmpamt-job{i}",
                )
                job.start()
                procs.append(job)
        while len(results) + len(errors) < jobs:
            if should_stop():
                interrupted = True
                stop.set()
            try:
                kind, index, payload = out.get(timeout=POLL)
            except queue.Empty:
                for i, proc in enumerate(procs):
                    if proc.exitcode is not None and i not in results and i not in errors:
                        # Invariant: a job always reports before it exits; silence is a crash.
                        time.sleep(POLL)  # its last message may still be in the pipe
                        if out.empty():
                            errors[i] = f"exited with status {proc.exitcode} without a result"
                            stop.set()
                continue
            if kind == "progress":
                progress[index] = payload
                if on_progress is not None:
                    on_progress(_sum_progress(progress))
            elif kind == "result":
                results[index] = payload
            else:
                errors[index] = payload
                stop.set()
    finally:
        stop.set()
        deadline = time.monotonic() + JOIN_GRACE
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(5)
    # A job that failed stops the others, which may then return having run nothing: with
    # no execution anywhere (and no Ctrl-C) the run failed, e.g. no room in /dev/shm.
    if not results or (
        errors and not interrupted and not any(r.operations for r in results.values())
    ):
        raise RunFailure(_errors_line(errors))
    merged = merge_jobs([results[i] for i in sorted(results)], config)
    if errors:
        extra = tuple(f"job {i} failed: {e}" for i, e in sorted(errors.items()))
        merged = replace(merged, incidents=merged.incidents + extra)
    return merged


def _errors_line(errors: dict[int, str]) -> str:
    """Every job's error on one line; jobs that failed alike (say, no room in /dev/shm)
    are named together, so the line says it once."""
    alike: dict[str, list[int]] = {}
    for i, e in sorted(errors.items()):
        alike.setdefault(e, []).append(i)
    return "; ".join(
        f"job{'s' if len(js) > 1 else ''} {', '.join(map(str, js))}: {e}" for e, js in alike.items()
    )


def _share(total: int | None, index: int, jobs: int) -> int | None:
    """Job ``index``'s part of an executions bound (the parts add up to ``total``)."""
    if total is None:
        return None
    return max(1, total // jobs + (1 if index < total % jobs else 0))


def _sum_progress(progress: dict[int, ExploreProgress]) -> ExploreProgress:
    ps = list(progress.values())
    return ExploreProgress(
        executions=sum(p.executions for p in ps),
        distinct=sum(p.distinct for p in ps),
        kinds=max(p.kinds for p in ps),
        elapsed=max(p.elapsed for p in ps),
        budget=max(p.budget for p in ps),
        estimate=TreeEstimate.combined(
            (p.estimate for p in ps if p.estimate is not None), max(p.elapsed for p in ps)
        ),
    )


_STRENGTH: Final = {SAMPLED: 0, BOUNDED: 1, VERIFIED: 2}


def merge_jobs(parts: list[VariantResult], config: ExploreConfig) -> VariantResult:
    """One result from the jobs' results, in job order (so the merge is deterministic)."""
    first = parts[0]
    counts = {n: sum(p.counts.get(n, 0) for p in parts) for n in first.counts}
    examples: dict[str, Any] = {}
    best: dict[str, Finding] = {}
    for p in parts:
        for n, v in p.examples.items():
            examples.setdefault(n, v)
        for f in p.findings:
            if f.kind in best:
                best[f.kind] = replace(
                    best[f.kind], executions=best[f.kind].executions + f.executions
                )
            else:
                best[f.kind] = f
    stats = [p.explore for p in parts if p.explore is not None]
    # The whole is only as strong as its weakest part: verified needs every shard verified.
    claim = min((s.claim for s in stats), key=lambda c: _STRENGTH.get(c, 0), default=SAMPLED)
    findings = tuple(sorted(best.values(), key=lambda f: (f.kind in config.ignore, f.kind)))
    return replace(
        first,
        operations=sum(p.operations for p in parts),
        elapsed_s=max(p.elapsed_s for p in parts),
        counts=counts,
        examples=examples,
        incidents=tuple(f"job {i}: {inc}" for i, p in enumerate(parts) for inc in p.incidents),
        findings=findings,
        coverage="; ".join(f"job {i}: {p.coverage}" for i, p in enumerate(parts)),
        explore=ExploreStats(
            strategy=config.strategy,
            executions=sum(s.executions for s in stats),
            distinct_schedules=sum(s.distinct_schedules for s in stats),
            steps_total=sum(s.steps_total for s in stats),
            claim=claim,
            ignored_only=sum(s.ignored_only for s in stats),
            estimate=TreeEstimate.combined(
                (s.estimate for s in stats if s.estimate is not None), 0.0
            ),
            # Every job runs the same scenario: a reduction any of them used is named.
            reductions=tuple(dict.fromkeys(r for s in stats for r in s.reductions)),
        ),
        shown=next((f.execution for f in findings if f.kind not in config.ignore), None),
    )
