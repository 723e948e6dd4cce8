"""Chaos for free-running stress: delays that widen race windows, uniform or targeted.

Uniform chaos (KCSAN's original recipe) delays any primitive with one
probability. Most of those delays fall where nothing can race, so rare
interleavings stay rare and a run's verdict changes from seed to seed.
Targeted chaos delays a CPU *inside* the windows where protocols race —
between two of its primitives on one refcount slot, with extra weight while it
holds ``pamt_lock``, right after a SEAMCALL returned, and between a read (or a
refused conditional atomic) and the write that follows — and adapts online:
a window other CPUs have seldom landed in (counted in the shared
:class:`~shmpamt.machine.coverage.WindowTable`) is delayed more often than one they
land in all the time (a count-based exploration bonus, the simplest bandit).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Final

from shmpamt.machine.coverage import (
    ATOMICS,
    CODE,
    OTHER,
    OUTCOME,
    SEAMCALLS,
    SLOTTED,
    WindowTable,
    outcome_code,
)

TARGETED: Final = "targeted"
UNIFORM: Final = "uniform"
#: the first is the default
CHAOS_MODES: Final = (TARGETED, UNIFORM)

#: intrusions after which a window counts as half explored (the bonus halves)
NOVELTY_SCALE: Final = 4.0
#: share of the chaos probability a racy window keeps however well it is covered
FLOOR: Final = 0.5
#: chaos probability multiplier for a racy window nobody has landed in yet
BONUS: Final = 2.0
#: an ordinary window (neither locked, nor after a SEAMCALL, nor read-then-write)
#: gets this share of the racy windows' weight
ORDINARY: Final = 0.1
#: locked windows deeper than this many primitives after spin_lock get the full weight
DEPTH: Final = 2
#: a targeted delay lasts chaos_us..STRETCH x chaos_us: long enough for another CPU
#: to run a fast path and a SEAMCALL inside it
STRETCH: Final = 4.0
#: an intruder re-checks up to this many times, holding back each time with
#: probability p x INTRUDER_WEIGHT for INTRUDER_SHARE of a targeted delay
INTRUDER_CHECKS: Final = 4
INTRUDER_WEIGHT: Final = 2.5
INTRUDER_SHARE: Final = 0.5
#: a refused conditional atomic (a fast path that failed) and a plain read
_CHECKS: Final = frozenset({CODE["atomic_read"], *(OUTCOME[n] for n in ATOMICS if n in OUTCOME)})
_SEAMCALL_CODES: Final = frozenset(
    {CODE[n] for n in SEAMCALLS} | {OUTCOME[n] for n in SEAMCALLS if n in OUTCOME}
)
_ATOMIC_CODES: Final = frozenset(CODE[n] for n in ATOMICS)


class UniformChaos:
    """A random short delay or yield at any primitive, with probability ``p``."""

    def __init__(self, rng: random.Random, p: float, max_us: int) -> None:
        self._rng = rng
        self._p = p
        self._max = max_us / 1e6

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> None:
        r = self._rng.random()
        if r < self._p:
            if r < self._p / 2:
                os.sched_yield()
            else:
                time.sleep(self._rng.random() * self._max)

    def after(self, op: str, target: int, result: int) -> None:
        return None


#: the name CPU code and tests used before targeted chaos existed
ChaosHook = UniformChaos


def window_weight(x1: int, x2: int, depth: int) -> float:
    """How racy the window (x1, x2) is, 0..1, for a CPU ``depth`` primitives past
    spin_lock (-1: not holding pamt_lock).

    A slow path's entry (a refused fast path, spin_lock, the recheck right after
    it) is where a racing fast path lands without help: every CPU that arrives
    while another is in its slow path lands there first. So the owner's delays go
    deeper: to locked windows past the recheck, to the window right after a
    SEAMCALL returned, and to a read followed by a write of the same slot.
    """
    if depth >= 0:
        return min(1.0, depth / DEPTH)
    if x1 in _SEAMCALL_CODES or (x1 == CODE["atomic_read"] and x2 in _ATOMIC_CODES):
        return 1.0
    return ORDINARY


def delay_probability(p: float, hits: int, weight: float) -> float:
    """The bandit's arm: ``p`` scaled by how racy the window is and how seldom it was hit."""
    novelty = 1.0 / (1.0 + hits / NOVELTY_SCALE)
    return min(weight * p * (FLOOR + BONUS * novelty), 0.95)


def worth_waiting(x1: int, locked: bool) -> bool:
    """An intruder holds back from a CPU in its slow path: past a refused fast path, or
    holding pamt_lock, so that it lands deeper in that path."""
    return locked or x1 in _CHECKS


class TargetedChaos:
    """Counts this CPU's windows in the shared table and delays the uncovered ones.

    ``sleep`` is injectable so the counting can be tested without time passing.
    """

    def __init__(
        self,
        cpu: int,
        table: WindowTable,
        rng: random.Random,
        p: float,
        max_us: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cpu = cpu
        self.table = table
        self._rng = rng
        self._p = p
        self._min = max_us / 1e6
        self._max = STRETCH * max_us / 1e6
        self._sleep = sleep
        self._slot = -1  # the refcount slot this CPU works on (lock/alloc/free inherit it)
        self._prev = -1  # code of the last primitive on _slot (-1: no window open)
        self._depth = -1  # primitives since spin_lock; -1: not holding pamt_lock
        #: delays inserted so far (a CPU publishes it on its board)
        self.delays = 0

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> None:
        code = CODE.get(op, OTHER)
        slot = target if op in SLOTTED else self._slot
        if slot < 0:
            return
        if slot != self._slot:
            # A new slot: the old window never got its X2; its intruders do not count.
            self.table.close_window(self.cpu)
            self.table.take_mask(self.cpu)
            self._slot, self._prev = slot, -1
        # As intruder: another CPU is inside a racy window on this slot. Holding back
        # moves this primitive to a later point of that CPU's sequence (reads-from
        # fuzzing): without it, the intruder lands where the race always lands.
        for _ in range(INTRUDER_CHECKS):
            open_here = self.table.intrude(self.cpu, slot, code)
            if not any(worth_waiting(x1, locked) for x1, locked in open_here):
                break
            if self._rng.random() >= self._p * INTRUDER_WEIGHT:
                break
            self._delay(INTRUDER_SHARE)
        if self._prev < 0:
            return
        # As window owner: stay between X1 and X2 a while so others can land inside.
        x1 = self._prev
        weight = window_weight(x1, code, self._depth)
        q = delay_probability(self._p, self.table.hits_of(x1, code), weight) if weight else 0.0
        if q and self._rng.random() < q:
            self._delay()
        self.table.take(self.cpu, x1, code)

    def _delay(self, share: float = 1.0) -> None:
        self.delays += 1
        self._sleep(share * (self._min + self._rng.random() * (self._max - self._min)))

    def after(self, op: str, target: int, result: int) -> None:
        if op == "spin_lock":
            self._depth = 0
        elif op == "spin_unlock":
            self._depth = -1
        elif self._depth >= 0:
            self._depth += 1
        if self._slot < 0:
            return
        self._prev = outcome_code(op, result)
        self.table.open_window(self.cpu, self._slot, self._prev, self._depth >= 0)
