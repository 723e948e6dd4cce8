"""Scheduling strategies for explore mode, all behind :class:`Scheduler` (base.py)."""

from __future__ import annotations

from shmpamt.errors import SchedulingError
from shmpamt.schedulers.base import (
    BaseScheduler,
    Nondeterminism,
    ScheduleMismatch,
    Scheduler,
    SplitMix64,
    default_choice,
)
from shmpamt.schedulers.dfs import DFS
from shmpamt.schedulers.pct import PCT
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.replay import Replay

__all__ = [
    "DFS",
    "PCT",
    "BaseScheduler",
    "Nondeterminism",
    "RandomWalk",
    "Replay",
    "ScheduleMismatch",
    "Scheduler",
    "SchedulingError",
    "SplitMix64",
    "default_choice",
]
