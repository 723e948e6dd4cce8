"""One task of a distributed proof: a DPOR subtree explored for a slice, then split.

A task is named by a *prefix* of split-state positions (see :mod:`.dpor`). Its
DPOR expands every state with two or more awake CPUs fully down to
``split_depth`` split states per path, so the tree of subtrees is fixed before
anything runs: any subtree of it can be explored by a task of its own and
gives the same executions as inside its parent's task.

:func:`run_slice` explores the prefix's subtree in DPOR's own order and, once
``limit`` executions have run, stops at the next execution that would start a
new alternative of one of those split states (Yang, Chen, Gopalakrishnan,
Kirby, "Distributed dynamic partial order reduction", STTT 2010: hand off the
unexplored states; Simsa, Bryant, Gibson, "Scalable dynamic partial order
reduction", RV 2012: a frontier with time slicing). At that point everything
the task touched is either finished or not started: the alternatives not yet
taken at every split state on the current path are handed back as tasks (the
deepest and smallest ones as well as the big ones near the top, so an idle
worker finds work at once), and what was run is reported as the largest
finished subtrees, each counted here, once. Nothing is explored twice.

A task also ends its slice early, at the next such point, when ``should_split``
says a worker is idle, so work is handed out as soon as someone can take it.
If the next such point is behind a piece the task has only just entered (at
most ``EARLY_HANDOFF`` of its executions run), the task does not make the idle
worker wait for that piece: it hands the piece back too, as a task of its own,
and those few executions are dropped (run again, and counted, by the piece's
task). Otherwise the first task of a proof, whose first piece below the last
split state is the largest of all (nothing sleeps in it), kept every other
worker idle until that piece was done.

Between two such points a task explores one subtree below the last split state
(a path has at most ``split_depth`` of them): it finishes it, however large,
since its own task could not cut it either. Only a task stopped from outside
(Ctrl-C) ends mid-piece: the piece in progress (below the deepest split state on
the path) is dropped and handed back to be explored again by its own task, and
its executions are counted by that task only. The counts never depend on where
the slices ended.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from shmpamt.schedulers.dpor import DPOR

T = TypeVar("T")

Prefix = tuple[int, ...]

#: most executions of a piece a task drops to hand it back to an idle worker
EARLY_HANDOFF = 4


@dataclass
class Part(Generic[T]):
    """What one finished subtree came to."""

    executions: int = 0
    complete: int = 0
    sleep_blocked: int = 0
    deadlocks: int = 0
    steps: int = 0
    #: what the caller's ``execute`` returned for each of its executions that completed
    seen: list[T] = field(default_factory=list)

    def add(self, other: Part[T]) -> None:
        self.executions += other.executions
        self.complete += other.complete
        self.sleep_blocked += other.sleep_blocked
        self.deadlocks += other.deadlocks
        self.steps += other.steps
        self.seen += other.seen


@dataclass
class SliceResult(Generic[T]):
    prefix: Prefix
    #: finished subtrees by their full path (the prefix itself: the whole subtree is done)
    finished: dict[Prefix, Part[T]]
    #: subtrees not explored, in DPOR's order: each is the prefix of a new task
    outstanding: list[Prefix]
    #: executions run, including those of a piece dropped when the task was stopped
    executions: int
    #: the task was stopped from outside (Ctrl-C) before its subtree or its slice was done
    stopped: bool = False
    #: executions of the piece in progress that was dropped (explored again by its own task)
    dropped: int = 0

    @property
    def complete(self) -> int:
        return sum(p.complete for p in self.finished.values())


def _path(prefix: Prefix, splits: list[tuple[int, int]]) -> Prefix:
    return (*prefix, *(pos for pos, _ in splits))


def run_slice(
    dpor: DPOR,
    execute: Callable[[], T],
    limit: int | None,
    should_stop: Callable[[], bool] = lambda: False,
    should_split: Callable[[], bool] = lambda: False,
) -> SliceResult[T]:
    """Explore ``dpor``'s subtree until it is done, or ``limit`` executions are run (or
    ``should_split`` says a worker is idle) and the slice can end (see the module
    docstring); ``execute`` runs one execution."""
    prefix = dpor.subtree
    if prefix is None:
        raise ValueError("run_slice needs a DPOR made with subtree=prefix")
    depth = len(prefix) + 1 if dpor.split_depth is None else dpor.split_depth
    if len(prefix) >= depth:
        limit = None  # no split state below the prefix: the task runs its subtree to the end
    runs: list[tuple[Prefix, Part[T]]] = []
    ran = 0
    while True:
        before = (dpor.complete_executions, dpor.sleep_blocked, dpor.deadlocks)
        seen = execute()
        ran += 1
        one: Part[T] = Part(1, steps=len(dpor.steps))
        one.complete = dpor.complete_executions - before[0]
        one.sleep_blocked = dpor.sleep_blocked - before[1]
        one.deadlocks = dpor.deadlocks - before[2]
        if one.complete:
            one.seen.append(seen)
        path = _path(prefix, dpor.subtree_splits)
        # Invariant: executions come in DPOR's order, which is the order of their paths.
        assert not runs or runs[-1][0] <= path, (runs[-1][0], path)
        runs.append((path, one))
        stopping = should_stop()
        if not dpor.new_execution():
            return SliceResult(prefix, _largest(prefix, runs, []), [], ran)
        idle = limit is not None and should_split()
        over = limit is not None and (ran >= limit or idle)
        if over and dpor.at_split:
            splits = dpor.subtree_splits
            # The top split state's new alternative has not started: it is handed back too.
            todo = _untaken(prefix, splits, from_top=splits[-1][0])
            return SliceResult(prefix, _largest(prefix, runs, todo), todo, ran)
        if stopping:
            return _drop(prefix, dpor.subtree_splits, runs, ran, stopping)
        if idle and _just_entered(prefix, dpor.subtree_splits, runs):
            return _drop(prefix, dpor.subtree_splits, runs, ran, False)


def _just_entered(
    prefix: Prefix, splits: list[tuple[int, int]], runs: list[tuple[Prefix, Part[T]]]
) -> bool:
    """Whether the piece in progress (below the deepest split state on the path) lies
    below the prefix and has run at most EARLY_HANDOFF executions."""
    if not splits:
        return False  # the piece is the whole subtree: handing it back would loop
    piece = _path(prefix, splits)
    mine = sum(1 for p, _ in runs if p[: len(piece)] == piece)
    return mine <= EARLY_HANDOFF


def _untaken(prefix: Prefix, splits: list[tuple[int, int]], from_top: int) -> list[Prefix]:
    """The alternatives not taken yet at each split state of the path, top down, and at
    the last one those from ``from_top`` on."""
    out: list[Prefix] = []
    for level, (pos, n) in enumerate(splits):
        above = _path(prefix, splits[:level])
        first = from_top if level == len(splits) - 1 else pos + 1
        out += [(*above, c) for c in range(first, n)]
    return out


def _drop(
    prefix: Prefix,
    splits: list[tuple[int, int]],
    runs: list[tuple[Prefix, Part[T]]],
    ran: int,
    stopped: bool,
) -> SliceResult[T]:
    """End mid-piece: the piece below the deepest split state goes back unfinished."""
    if not splits:
        # Not even the first split state below the prefix was left: all of it goes back.
        return SliceResult(prefix, {}, [prefix], ran, stopped, dropped=ran)
    piece = _path(prefix, splits)
    todo = _untaken(prefix, splits, from_top=splits[-1][0])
    kept = [(p, part) for p, part in runs if p[: len(piece)] != piece]
    return SliceResult(prefix, _largest(prefix, kept, todo), todo, ran, stopped, ran - len(kept))


def _largest(
    prefix: Prefix, runs: list[tuple[Prefix, Part[T]]], todo: list[Prefix]
) -> dict[Prefix, Part[T]]:
    """The executions of ``runs`` summed per largest subtree with nothing in ``todo``."""
    busy = {t[:d] for t in todo for d in range(len(prefix), len(t) + 1)}
    out: dict[Prefix, Part[T]] = {}
    for path, part in runs:
        top = next(
            (path[:d] for d in range(len(prefix), len(path) + 1) if path[:d] not in busy), None
        )
        # Invariant: a finished execution's path is no ancestor of a subtree handed back
        # (it would then be counted here and again by that subtree's task).
        assert top is not None, (path, todo)
        out.setdefault(top, Part()).add(part)
    return out
