"""A campaign: a matrix of variants x strategies x seeds cut into shards, and the merge of
the shards' results into one verdict.

This module is the plan and the arithmetic only (no Dask, no processes), so both
can be tested alone: :class:`Plan` validates the matrix and yields
:class:`Shard` objects, each of which becomes one ``StressConfig`` or
``ExploreConfig`` for :func:`shmpamt.api.run`; :func:`merge` folds
:class:`ShardOutcome` records, in any order, into one :class:`VariantSummary`
per variant. Merging is order-independent (the best schedule of a kind is the
one with the fewest steps, ties broken by the string), so a campaign's verdict
does not depend on which worker finished first.
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shmpamt.config import (
    MAX_SEED,
    ExploreConfig,
    StressConfig,
    check_float,
    check_ignore,
    check_int,
    check_variant,
)
from shmpamt.errors import UsageError
from shmpamt.records.violations import VIOLATIONS
from shmpamt.schedulers.registry import DEFAULT_STRATEGY, STRATEGIES

#: the pseudo-strategy of a free-running stress shard
STRESS: Final = "stress"
#: what a matrix may list under ``strategies``
SHARD_KINDS: Final = (*STRATEGIES, STRESS)
#: seconds per shard when neither a budget nor executions are given
DEFAULT_SHARD_BUDGET: Final = 5.0
#: the most shards one campaign may have: checked before anything starts, so an
#: oversized matrix (say 8 variants x 7 strategies x 100,000 seeds) is refused at once
MAX_SHARDS: Final = 100_000
#: a matrix file is a few lines; anything far larger is a wrong path
MAX_MATRIX_BYTES: Final = 1 << 20
#: keys a campaign TOML file may have
TOML_KEYS: Final = frozenset(
    {"variants", "strategies", "seed", "seeds", "budget", "executions", "cpus", "rounds", "ignore",
     "faults", "max_faults"}
)  # fmt: skip


@dataclass(frozen=True)
class Shard:
    """One task: one variant, one strategy (or stress), one seed."""

    index: int
    variant: str
    strategy: str
    seed: int
    budget: float | None = None
    executions: int | None = None
    cpus: int = 2
    rounds: int = 2
    ignore: frozenset[str] = frozenset()
    #: explore's --faults and --max-faults (a stress shard keeps its own faults)
    faults: str = "default"
    max_faults: int = 1

    @property
    def id(self) -> str:
        return f"{self.variant}/{self.strategy}/seed{self.seed}"

    def config(self) -> ExploreConfig | StressConfig:
        """The configuration this shard runs (no failure database: the client keeps it)."""
        if self.strategy == STRESS:
            return StressConfig(
                self.variant,
                cpus=self.cpus,
                seed=self.seed,
                duration=self.budget,
                iterations=self.executions,
                ignore=self.ignore,
            )
        return ExploreConfig(
            self.variant,
            strategy=self.strategy,
            cpus=self.cpus,
            rounds=self.rounds,
            seed=self.seed,
            budget=self.budget,
            executions=self.executions,
            ignore=self.ignore,
            faults=self.faults,
            max_faults=self.max_faults,
        )


@dataclass(frozen=True)
class Plan:
    """The matrix: every variant x every strategy x ``seeds`` seeds from ``seed``."""

    variants: tuple[str, ...]
    strategies: tuple[str, ...] = (DEFAULT_STRATEGY,)
    seed: int = 0
    seeds: int = 4
    #: seconds per shard; None = DEFAULT_SHARD_BUDGET unless ``executions`` is given
    budget: float | None = None
    #: executions per explore shard (get/put rounds per CPU for a stress shard)
    executions: int | None = None
    cpus: int = 2
    rounds: int = 2
    ignore: frozenset[str] = field(default_factory=frozenset)
    #: faults of the explore shards (ExploreConfig.faults, max_faults)
    faults: str = "default"
    max_faults: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # resolving defaults of a frozen dataclass
        if isinstance(self.variants, str) or not self.variants:
            raise UsageError("variants must list at least one variant", "variants")
        set_(self, "variants", tuple(dict.fromkeys(check_variant(v) for v in self.variants)))
        if isinstance(self.strategies, str) or not self.strategies:
            raise UsageError("strategies must list at least one strategy", "strategies")
        set_(self, "strategies", tuple(dict.fromkeys(self.strategies)))
        for s in self.strategies:
            if s not in SHARD_KINDS:
                raise UsageError(
                    f"unknown strategy {s!r}; choose among {', '.join(SHARD_KINDS)}", "strategy"
                )
        check_int("seed", self.seed, 0, MAX_SEED)
        check_int("seeds", self.seeds, 1, 100_000)
        if self.budget is not None and self.executions is not None:
            raise UsageError("give either budget or executions, not both", "budget")
        if self.executions is not None:
            check_int("executions", self.executions, 1)
        elif self.budget is None:
            set_(self, "budget", DEFAULT_SHARD_BUDGET)
        else:
            set_(self, "budget", check_float("budget", self.budget, 0, 86400, True))
        set_(self, "ignore", check_ignore(self.ignore))
        if self.size > MAX_SHARDS:
            raise UsageError(
                f"the matrix has {len(self.variants)} variant(s) x {len(self.strategies)} "
                f"strateg{'y' if len(self.strategies) == 1 else 'ies'} x {self.seeds} seed(s) "
                f"= {self.size:,} shards; a campaign may have at most {MAX_SHARDS:,}",
                "seeds",
            )
        for s in self.strategies:  # every shard's own checks, once, before any task runs
            Shard(0, self.variants[0], s, self.seed, *self._shape()).config()

    def _shape(self) -> tuple[float | None, int | None, int, int, frozenset[str], str, int]:
        return (
            self.budget, self.executions, self.cpus, self.rounds, self.ignore,
            self.faults, self.max_faults,
        )  # fmt: skip

    @property
    def size(self) -> int:
        """How many shards the matrix has (without making them)."""
        return len(self.variants) * len(self.strategies) * self.seeds

    def shard_id(self, index: int) -> str:
        """Shard ``index``'s :attr:`Shard.id`, without making the shard (cheap for the
        thousands a stopped campaign never started)."""
        per_variant = len(self.strategies) * self.seeds
        v, rest = divmod(index, per_variant)
        s, k = divmod(rest, self.seeds)
        return f"{self.variants[v]}/{self.strategies[s]}/seed{self.seed + k}"

    def shards(self) -> list[Shard]:
        """Variant-major, then strategy, then seed: shard i is the same for every run."""
        return list(self.iter_shards())

    def iter_shards(self) -> Iterator[Shard]:
        """:meth:`shards` one at a time, for a client that submits as workers free up."""
        i = 0
        for v in self.variants:
            for s in self.strategies:
                for k in range(self.seeds):
                    yield Shard(i, v, s, self.seed + k, *self._shape())
                    i += 1

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> Plan:
        """A plan from a small TOML file (keys: TOML_KEYS); ``overrides`` win."""
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{path} is not a regular file", "matrix")
            if st.st_size > MAX_MATRIX_BYTES:
                raise UsageError(
                    f"{path} has {st.st_size:,} bytes; a matrix file has at most "
                    f"{MAX_MATRIX_BYTES:,}",
                    "matrix",
                )
            data = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}", "matrix") from None
        except UnicodeDecodeError as e:
            raise UsageError(
                f"{path} is not UTF-8 text (byte {e.start}: {e.reason}); a matrix is a TOML file",
                "matrix",
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{path} is not valid TOML: {e}", "matrix") from None
        unknown = sorted(set(data) - TOML_KEYS)
        if unknown:
            raise UsageError(
                f"{path}: unknown key {unknown[0]!r}; known: {', '.join(sorted(TOML_KEYS))}",
                "matrix",
            )
        return cls.from_mapping({**data, **{k: v for k, v in overrides.items() if v}})

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Plan:
        d = dict(data)
        for key in ("variants", "strategies"):
            if key in d:
                d[key] = _names(key, d[key])
        if "ignore" in d:
            d["ignore"] = frozenset(_names("ignore", d["ignore"]))
        return cls(**d)


def _names(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{key} must be a list of names", key)
    return tuple(value)


# --- outcomes and the merge -------------------------------------------------------------


@dataclass(frozen=True)
class ShardOutcome:
    """What came back for one shard: its result (``VariantResult.to_dict()``) or an error."""

    shard: Shard
    result: dict[str, Any] | None
    host: str = ""
    worker: str = ""
    #: times the task started (more than 1: retried after a lost worker or a failure)
    attempts: int = 1
    error: str = ""
    #: the shard was stopped before its budget (Ctrl-C)
    stopped: bool = False

    @property
    def where(self) -> str:
        return f"{self.host}:{self.worker}" if self.host else self.worker


@dataclass
class Best:
    """The fewest-steps schedule of one kind, and where it was found."""

    schedule: str
    steps: int
    strategy: str
    shard: str
    where: str

    def rank(self) -> tuple[int, int, str]:
        return (self.steps, len(self.schedule), self.schedule)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "replay": f"shmpamt replay {self.schedule}" if self.schedule else "",
            "steps": self.steps,
            "strategy": self.strategy,
            "shard": self.shard,
            "where": self.where,
        }


@dataclass
class KindSummary:
    kind: str
    #: executions (explore) or occurrences (stress) that showed it, over every shard
    count: int = 0
    #: shards that showed it
    shards: int = 0
    ignored: bool = False
    #: one sentence of the first example, in shard order
    what: str = ""
    best: Best | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "shards": self.shards,
            "ignored": self.ignored,
            "what": self.what,
            "best": self.best.to_dict() if self.best else None,
        }


@dataclass
class VariantSummary:
    variant: str
    shards: int = 0
    #: shards that ended in an error (after Dask's retries)
    errors: list[str] = field(default_factory=list)
    stopped: int = 0
    retried: list[str] = field(default_factory=list)
    operations: int = 0
    kinds: dict[str, KindSummary] = field(default_factory=dict)
    incidents: list[str] = field(default_factory=list)
    #: (replayed, still failing) of the regression check; None when no database was used
    regressions: tuple[int, int] | None = None

    @property
    def failing(self) -> list[str]:
        return sorted(k for k, s in self.kinds.items() if not s.ignored)

    def verdict(self) -> dict[str, Any]:
        """What the campaign concluded, without where or when: equal for equal shards."""
        return {
            "variant": self.variant,
            "verdict": self.failing,
            "counts": {k: s.count for k, s in sorted(self.kinds.items())},
            "best": {k: s.best.schedule if s.best else "" for k, s in sorted(self.kinds.items())},
            "operations": self.operations,
            "incidents": sorted(self.incidents),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.verdict(),
            "shards": self.shards,
            "errors": self.errors,
            "stopped_shards": self.stopped,
            "retried": self.retried,
            "regressions": (
                {"replayed": self.regressions[0], "still_failing": self.regressions[1]}
                if self.regressions is not None
                else None
            ),
            "kinds": {k: s.to_dict() for k, s in sorted(self.kinds.items())},
        }


def merge_shards(outcomes: Iterable[ShardOutcome]) -> dict[str, VariantSummary]:
    """One summary per variant (in first-shard order), whatever order outcomes came in."""
    out: dict[str, VariantSummary] = {}
    for o in sorted(outcomes, key=lambda o: o.shard.index):
        v = out.setdefault(o.shard.variant, VariantSummary(o.shard.variant))
        add_outcome(v, o)
    return out


def add_outcome(v: VariantSummary, o: ShardOutcome) -> None:
    if o.stopped:
        v.stopped += 1
        if o.result is None:
            return  # stopped before it started: it ran nothing
    v.shards += 1
    if o.attempts > 1:
        v.retried.append(f"{o.shard.id} ran {o.attempts} times (a worker was lost or it failed)")
    if o.result is None:
        v.errors.append(f"{o.shard.id}: {o.error}")
        return
    r = o.result
    v.operations += int(r.get("operations", 0))
    v.incidents.extend(f"{o.shard.id}: {i}" for i in r.get("incidents", ()))
    ignored = set(r.get("ignored", ()))
    best_of = {f["kind"]: f for f in r.get("schedules", ())}
    for kind, info in r.get("violations", {}).items():
        k = v.kinds.setdefault(kind, KindSummary(kind, ignored=kind in ignored))
        k.count += int(info.get("count", 0))
        k.shards += 1
        if not k.what and "example" in info:
            k.what = str(info["example"].get("what", ""))
        f = best_of.get(kind)
        if f is not None:
            cand = Best(f["schedule"], int(f["steps"]), f["strategy"], o.shard.id, o.where)
            if k.best is None or cand.rank() < k.best.rank():
                k.best = cand


def add_regressions(
    v: VariantSummary, replayed: int, still: Iterable[tuple[str, str, int, str]]
) -> None:
    """Fold a regression check in: each (kind, schedule, steps, strategy) in ``still`` is a
    stored schedule that still fails; it counts once and competes for the best schedule."""
    still = list(still)
    v.regressions = (replayed, len(still))
    for kind, schedule, steps, strategy in still:
        k = v.kinds.setdefault(kind, KindSummary(kind))
        k.count += 1
        cand = Best(schedule, steps, f"stored ({strategy})", "regression check", "")
        if k.best is None or cand.rank() < k.best.rank():
            k.best = cand


def ordered_kinds(v: VariantSummary) -> list[KindSummary]:
    return [v.kinds[n] for n in VIOLATIONS if n in v.kinds]
