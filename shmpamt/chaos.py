"""Chaos for free-running stress: KCSAN-style window widening at every primitive."""

from __future__ import annotations

import os
import random
import time


class ChaosHook:
    """KCSAN-style window widening: a random short delay or yield at a primitive."""

    def __init__(self, rng: random.Random, p: float, max_us: int) -> None:
        self._rng = rng
        self._p = p
        self._max = max_us / 1e6

    def before(self, op: str, target: int) -> None:
        r = self._rng.random()
        if r < self._p:
            if r < self._p / 2:
                os.sched_yield()
            else:
                time.sleep(self._rng.random() * self._max)

    def after(self, op: str, target: int, result: int, value: int) -> None:
        return None
