"""Scheduling strategies for explore mode, all behind :class:`Scheduler` (base.py)."""

from __future__ import annotations

from shmpamt.errors import SchedulingError
from shmpamt.schedulers.base import (
    OUTCOMES,
    Access,
    BaseScheduler,
    Claim,
    Nondeterminism,
    Outcome,
    ScheduleMismatch,
    Scheduler,
    SleepBlocked,
    SplitMix64,
    default_choice,
    dependent,
)
from shmpamt.schedulers.dfs import DFS
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.pct import PCT
from shmpamt.schedulers.portfolio import Portfolio
from shmpamt.schedulers.pos import POS
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.registry import HELP, STRATEGIES, claim_of, make_scheduler
from shmpamt.schedulers.replay import Replay

__all__ = [
    "DFS",
    "DPOR",
    "HELP",
    "OUTCOMES",
    "PCT",
    "POS",
    "STRATEGIES",
    "Access",
    "BaseScheduler",
    "Claim",
    "Nondeterminism",
    "Outcome",
    "Portfolio",
    "RandomWalk",
    "Replay",
    "ScheduleMismatch",
    "Scheduler",
    "SchedulingError",
    "SleepBlocked",
    "SplitMix64",
    "claim_of",
    "default_choice",
    "dependent",
    "make_scheduler",
]
