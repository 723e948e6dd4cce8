"""How much of an exhaustive search's tree has been explored, and so how big the tree
is and how long the rest will take: a rough, cheap estimate from the current path.

The path of a depth-first search says, at every state on it, how many of the state's
alternatives are finished and how many are known. Taking every subtree of a state to
be as big as the others (Knuth's assumption, "Estimating the efficiency of backtrack
programs", 1975, which GenMC's and Concuerror's estimators also start from), the
explored share of the tree is ``sum over depth d of finished_d / known_d * prod over
e < d of 1 / known_e``. Alternatives a later race adds are not known yet, and the first
subtree of a DPOR state is the big one (nothing sleeps in it), so the share is an
over-estimate early on and the time left an under-estimate; both get better as the
search goes. ``campaign/proof.py`` estimates a distributed proof from its finished
subtrees instead, which it has and a single search does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def explored_share(levels: Iterable[tuple[int, int]]) -> float:
    """The share of the tree done before the current leaf; ``levels`` (finished
    alternatives, known alternatives) of each state on the path, root first."""
    share, weight = 0.0, 1.0
    for finished, known in levels:
        known = max(known, finished + 1)  # the one on the path is known
        share += weight * finished / known
        weight /= known
    return min(1.0, share + weight)  # the leaf just run


@dataclass(frozen=True)
class TreeEstimate:
    """An exhaustive search's progress: share explored, and what it implies."""

    #: share of the tree explored, 0..1 (1: exhausted)
    share: float
    #: executions the whole tree is guessed to take
    executions: int
    #: seconds the rest is guessed to take, at the rate so far
    seconds_left: float

    @classmethod
    def of(cls, share: float, executions: int, elapsed: float) -> TreeEstimate:
        share = min(1.0, max(share, 1e-12))
        return cls(share, round(executions / share), elapsed * (1 - share) / share)

    @classmethod
    def combined(cls, parts: Iterable[TreeEstimate], elapsed: float) -> TreeEstimate | None:
        """Jobs searching disjoint parts of one tree at once: one estimate for all."""
        ps = list(parts)
        if not ps:
            return None
        total = sum(p.executions for p in ps)
        done = sum(p.executions * p.share for p in ps)
        return cls(done / total if total else 1.0, total, max(p.seconds_left for p in ps))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "explored_share": round(self.share, 6),
            "executions_total": self.executions,
            "seconds_left": round(self.seconds_left, 1),
        }

    def __str__(self) -> str:
        return (
            f"about {self.share:.1%} of the tree explored (estimate: {self.executions:,} "
            f"executions in all, {_duration(self.seconds_left)} left)"
        )


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"
