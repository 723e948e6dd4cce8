"""One task of a distributed proof on the rig: a DPOR subtree for one slice.

:func:`run_subtree` runs :func:`shmpamt.schedulers.subtree.run_slice` on a
:class:`~shmpamt.explorer.session.Session` and returns plain data (it travels
back from a Dask worker): per finished subtree (by its path, "0.2.1") its counts
and the violation kinds its executions showed, the subtrees handed back, and the
schedule of each kind.
A kind the proof has not seen yet (``known`` says which it has) is minimised
here, where the session is; others are only counted.

Starting a session (a daemon and a process per CPU) costs about as much as
hundreds of executions, and a proof is many short tasks of one scenario, so
the process keeps its last session open for the next task (:func:`session_for`).
It is closed when another scenario comes, when a task fails (its state is then
unknown), and at exit; after a SIGKILL the reaper removes its IPC objects as
for every run.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shmpamt.config import Scenario
from shmpamt.explorer.search import shrink
from shmpamt.explorer.session import Session, StartAborted
from shmpamt.explorer.symmetry import scenario_symmetry
from shmpamt.machine.placement import core_for
from shmpamt.records.execution import STEP_LIMIT
from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.subtree import run_slice


@dataclass(frozen=True)
class SubtreeTask:
    """What a worker needs to explore one subtree (picklable, small)."""

    variant: str
    cpus: int
    rounds: int
    ranges: int
    seed: int
    prefix: tuple[int, ...]
    #: executions per slice (None: run the subtree to its end)
    limit: int | None
    #: split states per path of the proof's fixed tree of subtrees
    depth: int | None = None
    #: kinds the proof already has a minimised schedule for
    known: frozenset[str] = frozenset()
    pin: bool = True
    #: DPOR's symmetry over interchangeable CPUs (the split states' alternatives are
    #: then the CPUs it does not prune, in every task alike)
    symmetry: bool = False
    #: DPOR ends each execution's search at its first violation
    halt_at_violation: bool = False

    @property
    def scenario(self) -> Scenario:
        return Scenario(self.variant, self.cpus, self.rounds, self.ranges)


_session: tuple[Scenario, Session] | None = None


def session_for(
    scenario: Scenario, pin: bool, should_stop: Callable[[], bool] = lambda: False
) -> Session:
    """This process's open session for ``scenario``, started if needed; a start that
    ``should_stop`` gives up raises StartAborted with nothing left behind."""
    global _session
    if _session is not None and _session[0] == scenario:
        return _session[1]
    close_session()
    s = Session(scenario, core_for(0) if pin else None, should_stop=should_stop)
    _session = (scenario, s)
    return s


def close_session() -> None:
    """Close the kept session, if any (its processes end, its IPC objects go)."""
    global _session
    if _session is not None:
        _, s = _session
        _session = None
        s.close()


atexit.register(close_session)


def run_subtree(
    task: SubtreeTask,
    should_stop: Callable[[], bool] = lambda: False,
    should_split: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Explore ``task``'s subtree for one slice; the result as JSON-ready data."""
    scenario = task.scenario
    t_start = time.monotonic()
    try:
        session = session_for(scenario, task.pin, should_stop)
    except StartAborted:
        # Stopped (Ctrl-C) while the session started: nothing ran, the task goes back.
        return _nothing_run(task, time.monotonic() - t_start)
    t0 = time.monotonic()
    sym = scenario_symmetry(scenario, task.seed) if task.symmetry else None
    dpor = DPOR(
        workload_seed=task.seed, subtree=task.prefix, split_depth=task.depth, symmetry=sym,
        halt_at_violation=task.halt_at_violation,
    )  # fmt: skip

    def execute() -> tuple[frozenset[str], tuple[int, ...], bool]:
        ex = session.execute(dpor)
        return ex.kinds, tuple(ex.steps) if ex.kinds else (), ex.outcome == STEP_LIMIT

    try:
        if not dpor.new_execution():  # pragma: no cover  (a fresh DPOR always starts)
            raise AssertionError("a fresh search has no execution")
        res = run_slice(dpor, execute, task.limit, should_stop, should_split)
        first: dict[str, Schedule] = {}
        finished: dict[str, Any] = {}
        for path, part in sorted(res.finished.items()):
            kinds: dict[str, int] = {}
            limits = 0
            for seen, steps, hit_limit in part.seen:
                limits += hit_limit
                for k in seen:
                    kinds[k] = kinds.get(k, 0) + 1
                    if k not in first:
                        first[k] = scenario.schedule(task.seed, steps)
            finished[".".join(map(str, path))] = {
                "executions": part.executions,
                "complete": part.complete,
                "sleep_blocked": part.sleep_blocked,
                "deadlocks": part.deadlocks,
                "steps": part.steps,
                "step_limits": limits,
                "kinds": kinds,
            }
        findings = []
        for kind, found in sorted(first.items()):
            small = found
            if kind not in task.known:
                small, _ = shrink(session, found, kind)
            findings.append(
                {
                    "kind": kind,
                    "schedule": small.encode(),
                    "found": found.encode(),
                    "steps": len(small.steps),
                }
            )
    except BaseException:
        close_session()  # whatever state it is in, the next task starts a fresh one
        raise
    return {
        "prefix": list(task.prefix),
        "finished": finished,
        "outstanding": [list(p) for p in res.outstanding],
        "executions": res.executions,
        "dropped": res.dropped,
        "seconds": time.monotonic() - t0,
        "start_s": t0 - t_start,
        "stopped": res.stopped,
        "findings": findings,
    }


def _nothing_run(task: SubtreeTask, start_s: float) -> dict[str, Any]:
    return {
        "prefix": list(task.prefix),
        "finished": {},
        "outstanding": [list(task.prefix)],
        "executions": 0,
        "dropped": 0,
        "seconds": 0.0,
        "start_s": start_s,
        "stopped": True,
        "findings": [],
    }
