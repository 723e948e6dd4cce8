"""One variant's verdict across both modes: free-running stress and the explore search.

Free-running stress has real parallelism but cannot be replayed; explore can
replay every kind it finds but schedules one step at a time. The default
campaign runs both and reports, per kind, which mode saw it and how to see it
again: a replay command when explore found it, otherwise the stress seed and a
note that free-running runs are not replayable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shmpamt.records.results import VariantResult, verdict_word
from shmpamt.records.violations import VIOLATIONS

STRESS_ONLY: Final = "stress"
EXPLORE_ONLY: Final = "explore"
BOTH: Final = "both"
NOT_REPLAYABLE: Final = (
    "seen only under real parallelism (free-running stress); free-running runs are "
    "not replayable: rerun with the same seed, or try shmpamt explore with more budget"
)


@dataclass(frozen=True)
class KindOrigin:
    kind: str
    #: STRESS_ONLY, EXPLORE_ONLY or BOTH
    found_by: str
    stress_count: int
    explore_count: int
    #: a replay command when explore found the kind, else ""
    replay: str
    #: the stress seed (the only handle on a stress-only kind)
    seed: int
    ignored: bool

    @property
    def note(self) -> str:
        return NOT_REPLAYABLE if self.found_by == STRESS_ONLY else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "found_by": self.found_by,
            "stress_count": self.stress_count,
            "explore_count": self.explore_count,
            "replay": self.replay or None,
            "stress_seed": self.seed,
            "ignored": self.ignored,
            "note": self.note or None,
        }


@dataclass(frozen=True)
class Verdict:
    variant: str
    stress: VariantResult | None
    explore: VariantResult | None

    @property
    def parts(self) -> tuple[VariantResult, ...]:
        return tuple(r for r in (self.stress, self.explore) if r is not None)

    @property
    def kinds(self) -> tuple[KindOrigin, ...]:
        s = self.stress.found if self.stress is not None else {}
        e = self.explore.found if self.explore is not None else {}
        replay = {f.kind: f.replay_command for f in self.explore.findings} if self.explore else {}
        ignored = frozenset().union(*(r.ignored for r in self.parts))
        seed = self.stress.seed if self.stress is not None else 0
        out: list[KindOrigin] = []
        for kind in VIOLATIONS:
            if kind not in s and kind not in e:
                continue
            by = BOTH if kind in s and kind in e else STRESS_ONLY if kind in s else EXPLORE_ONLY
            origin = KindOrigin(
                kind=kind,
                found_by=by,
                stress_count=s.get(kind, 0),
                explore_count=e.get(kind, 0),
                replay=replay.get(kind, ""),
                seed=seed,
                ignored=kind in ignored,
            )
            out.append(origin)
        return tuple(out)

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(k.kind for k in self.kinds if not k.ignored)

    @property
    def incidents(self) -> tuple[str, ...]:
        return tuple(i for r in self.parts for i in r.incidents)

    @property
    def verdict(self) -> str:
        return verdict_word(bool(self.failing), bool(self.incidents), bool(self.kinds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "result": self.verdict,
            "verdict": sorted(self.failing),
            "kinds": [k.to_dict() for k in self.kinds],
            "stress_only": [k.kind for k in self.kinds if k.found_by == STRESS_ONLY],
            "incidents": list(self.incidents),
        }


def verdicts(results: list[VariantResult]) -> list[Verdict]:
    """Pair each variant's stress and explore results, in the order they ran."""
    order: list[str] = []
    by: dict[str, dict[str, VariantResult]] = {}
    for r in results:
        key = r.spec or r.variant
        if key not in by:
            order.append(key)
            by[key] = {}
        by[key][r.mode] = r
    out: list[Verdict] = []
    for key in order:
        parts = by[key]
        # a replay is a controlled execution too: it sits where explore would
        st, ex = parts.get("stress"), parts.get("explore") or parts.get("replay")
        first = st if st is not None else ex
        # Invariant: a key exists only because one of its results was seen.
        assert first is not None, key
        out.append(Verdict(first.variant, st, ex))
    return out
