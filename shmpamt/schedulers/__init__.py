"""Scheduling strategies for explore mode, all behind :class:`Scheduler` (base.py)."""

from __future__ import annotations

from shmpamt.schedulers.base import (
    OUTCOMES,
    Access,
    BaseScheduler,
    Claim,
    Nondeterminism,
    Outcome,
    ScheduleMismatch,
    Scheduler,
    SchedulingError,
    SleepBlocked,
    SplitMix64,
    default_choice,
    dependent,
)
from shmpamt.schedulers.dfs import DFS
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.pct import PCT
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.replay import Replay

__all__ = [
    "DFS",
    "DPOR",
    "OUTCOMES",
    "PCT",
    "Access",
    "BaseScheduler",
    "Claim",
    "Nondeterminism",
    "Outcome",
    "RandomWalk",
    "Replay",
    "ScheduleMismatch",
    "Scheduler",
    "SchedulingError",
    "SleepBlocked",
    "SplitMix64",
    "default_choice",
    "dependent",
]
