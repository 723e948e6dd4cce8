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


def slot() -> int | None:
    """This process's place among its siblings: the xdist worker number, or the
    ``SHMPAMT_CORE_SLOT`` a campaign's worker sets; None when it runs alone."""
    index = xdist_index()
    if index is not None:
        return index
    env = os.environ.get("SHMPAMT_CORE_SLOT", "")
    return int(env) if env.isdigit() else None


def default_jobs() -> int:
    """Every usable core searches; among siblings (xdist, campaign workers) they already
    fill the cores, one explorer each."""
    return 1 if slot() is not None else len(usable_cores())


def core_for(job: int) -> int:
    """The core of explorer ``job``, shifted by this process's slot among its siblings."""
    cores = usable_cores()
    return cores[(job + (slot() or 0)) % len(cores)]


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
