"""Scheduling strategies for explore mode, all behind :class:`Scheduler` (base.py).

The names below load on first use (PEP 562): every CPU process imports
``schedulers.base`` and ``schedulers.faults`` (the board's fault points), and
importing this package eagerly would load every strategy into each of them
(10 ms a process with bytecode cached, 25 ms compiled from source).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
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

#: where each name of the package lives
_HOME: Final = {
    "SchedulingError": "shmpamt.errors",
    "OUTCOMES": "shmpamt.schedulers.base",
    "Access": "shmpamt.schedulers.base",
    "BaseScheduler": "shmpamt.schedulers.base",
    "Claim": "shmpamt.schedulers.base",
    "Nondeterminism": "shmpamt.schedulers.base",
    "Outcome": "shmpamt.schedulers.base",
    "ScheduleMismatch": "shmpamt.schedulers.base",
    "Scheduler": "shmpamt.schedulers.base",
    "SleepBlocked": "shmpamt.schedulers.base",
    "SplitMix64": "shmpamt.schedulers.base",
    "default_choice": "shmpamt.schedulers.base",
    "dependent": "shmpamt.schedulers.base",
    "DFS": "shmpamt.schedulers.dfs",
    "DPOR": "shmpamt.schedulers.dpor",
    "PCT": "shmpamt.schedulers.pct",
    "Portfolio": "shmpamt.schedulers.portfolio",
    "POS": "shmpamt.schedulers.pos",
    "RandomWalk": "shmpamt.schedulers.random_walk",
    "HELP": "shmpamt.schedulers.registry",
    "STRATEGIES": "shmpamt.schedulers.registry",
    "claim_of": "shmpamt.schedulers.registry",
    "make_scheduler": "shmpamt.schedulers.registry",
    "Replay": "shmpamt.schedulers.replay",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
