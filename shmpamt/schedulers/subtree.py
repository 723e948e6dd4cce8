"""One task of a distributed proof: a DPOR subtree explored for a slice, then split.

A task is named by a *prefix* of split-state positions (see :mod:`.dpor`); its
children are the alternatives of the next split state. :func:`run_slice`
explores the children in order with one ``DPOR(subtree=prefix)`` and stops at
the first execution boundary after ``limit`` executions. What it hands back:
the children it finished, each with its counts and whatever the executions
showed (counted here, once), and the children it did not finish, which become
tasks of their own. The one in progress when the slice ends is started again
from zero by its own task (the waste is at most one slice): only a finished
child's counts are ever reported, so every complete execution is counted by
exactly one task (Simsa, Bryant and Gibson, "Scalable dynamic partial order
reduction", RV 2012: a frontier with time slicing).

The slice is counted in executions, not seconds: the tree of tasks then depends
on the variant and the scenario only, never on the machine's load or on which
worker ran what, so an interrupted, retried or resumed proof ends with the same
count as one that ran straight through. A task whose prefix is
``MAX_SUBTREE_DEPTH`` long is not split again: it runs its subtree to the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shmpamt.schedulers.dpor import DPOR, MAX_SUBTREE_DEPTH

T = TypeVar("T")

#: the key of a subtree that never reaches its split state (a single execution)
WHOLE = -1


@dataclass
class Part(Generic[T]):
    """What one finished child (or a whole subtree without children) came to."""

    executions: int = 0
    complete: int = 0
    sleep_blocked: int = 0
    deadlocks: int = 0
    steps: int = 0
    #: what the caller's ``execute`` returned for each of its executions that completed
    seen: list[T] = field(default_factory=list)


@dataclass
class SliceResult(Generic[T]):
    prefix: tuple[int, ...]
    #: finished children by position (WHOLE: the subtree had none and ran its one execution)
    finished: dict[int, Part[T]]
    #: children not finished, in order: each is the prefix of a new task
    outstanding: list[tuple[int, ...]]
    #: executions run, including those of the child discarded at the slice's end
    executions: int
    #: the task was stopped from outside (Ctrl-C) before its subtree or its slice was done
    stopped: bool = False

    @property
    def complete(self) -> int:
        return sum(p.complete for p in self.finished.values())


def run_slice(
    dpor: DPOR,
    execute: Callable[[], T],
    limit: int | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SliceResult[T]:
    """Explore ``dpor``'s subtree until it is done, or ``limit`` executions are run and
    the slice can end at an execution boundary; ``execute`` runs one execution."""
    prefix = dpor.subtree
    if prefix is None:
        raise ValueError("run_slice needs a DPOR made with subtree=prefix")
    if len(prefix) >= MAX_SUBTREE_DEPTH:
        limit = None  # at the cap: no deeper split, the task runs its subtree to the end
    finished: dict[int, Part[T]] = {}
    current: Part[T] = Part()
    child: int | None = None
    children = 0
    ran = 0
    stopped = False
    while True:
        before = (dpor.complete_executions, dpor.sleep_blocked, dpor.deadlocks)
        seen = execute()
        ran += 1
        now = dpor.subtree_child
        # Invariant: a task's executions move through its children in order, never back.
        assert child is None or (now is not None and now >= child), (child, now)
        if now is not None and now != child:
            if child is not None:
                finished[child] = current
            current, child = Part(), now
        children = max(children, dpor.subtree_children)
        current.executions += 1
        current.steps += len(dpor.steps)
        current.complete += dpor.complete_executions - before[0]
        current.sleep_blocked += dpor.sleep_blocked - before[1]
        current.deadlocks += dpor.deadlocks - before[2]
        if dpor.complete_executions > before[0]:
            current.seen.append(seen)
        stopping = should_stop()
        over = limit is not None and ran >= limit
        if not dpor.new_execution():
            finished[WHOLE if child is None else child] = current
            return SliceResult(prefix, finished, [], ran)
        if over or stopping:
            stopped = stopping and not over
            break
    nxt = dpor.subtree_child
    # Invariant: past the first execution the subtree's split state is on the path.
    assert nxt is not None and child is not None
    if nxt != child:
        finished[child] = current  # the next execution would start the next child
    return SliceResult(prefix, finished, [(*prefix, c) for c in range(nxt, children)], ran, stopped)
