"""Placement: which core an explorer and all of its processes run on.

In explore mode only one process of a system runs at any moment (the
controller grants one step at a time), so spreading the controller, its CPUs
and its daemon across cores buys nothing and costs a cross-core wake-up on
every hand-off. One explorer per core: the whole system shares one core, and
other cores run other explorers (``--jobs``) or other xdist workers.
"""

from __future__ import annotations

import os
import re


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def xdist_index() -> int | None:
    """This pytest-xdist worker's number (gw3 -> 3), None outside xdist."""
    m = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(m.group(1)) if m else None


def default_jobs() -> int:
    """Every usable core searches; under xdist the workers already fill the cores."""
    return 1 if xdist_index() is not None else len(usable_cores())


def core_for(job: int) -> int:
    """The core of explorer ``job`` (shifted by the xdist worker number, if any)."""
    cores = usable_cores()
    return cores[(job + (xdist_index() or 0)) % len(cores)]


class pinned:
    """Run this process (and every process it starts meanwhile) on ``core``.

    Children inherit the affinity at spawn, so a system started inside stays on
    that core for its life; this process gets its old affinity back on exit
    (once, however often exit is called). ``core`` None changes nothing.
    """

    def __init__(self, core: int | None) -> None:
        self._core = core
        self._old: set[int] | None = None

    def __enter__(self) -> pinned:
        if self._core is not None:
            self._old = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self._core})
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            os.sched_setaffinity(0, self._old)
            self._old = None
