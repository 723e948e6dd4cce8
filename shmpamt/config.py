"""One frozen configuration per mode, validated and defaulted here and nowhere else.

The CLI, the library (``shmpamt.stress/explore/replay``) and the pytest plugin
all build one of these and hand it over; the engine below trusts it. Messages
speak to a library caller (``cpus must be within 1..64, not 0``); each
:class:`~shmpamt.errors.UsageError` carries the field name so the CLI can point
at its flag instead. This module imports only the standard library and other
light modules, so a front end can validate before loading cffi or posix_ipc.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from shmpamt import tdx
from shmpamt.errors import ScheduleError, UsageError, VariantLoadError
from shmpamt.machine.chaos import CHAOS_MODES
from shmpamt.machine.placement import default_jobs
from shmpamt.module.faults import LEAF_KEYS, FaultPlan
from shmpamt.records.faildb import OFF
from shmpamt.records.schedule_string import FAULT_KINDS, Schedule
from shmpamt.records.variant_files import (
    Located,
    locate,
    not_found,
    short_spec,
    source_hash,
    variant_file,
)
from shmpamt.records.violations import VIOLATIONS
from shmpamt.schedulers.base import MAX_EXPLORE_CPUS
from shmpamt.schedulers.faults import DEFAULT_PROBABILITY, DEFAULT_SHARE, MAX_FAULTS
from shmpamt.schedulers.registry import DEFAULT_STRATEGY, STRATEGIES

#: seconds of free-running stress per variant: the eight built-ins make about a minute
DEFAULT_STRESS_SECONDS: Final = 7.0
#: seconds an exploration searches when neither a budget nor executions are given
DEFAULT_EXPLORE_BUDGET: Final = 20.0
MAX_SEED: Final = 2**63 - 1
MAX_STRESS_CPUS: Final = 64
#: scheduled steps one get/use/put round may take before an execution counts as a livelock
STEPS_PER_ROUND: Final = 200


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass, but cpus=True is a mistake, not a count
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        limit = f"within {lo}..{hi}" if hi is not None else f"at least {lo}"
        raise UsageError(f"{name} must be {limit}, not {value}", name)
    return value


def check_float(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    v = float(value)
    # NaN passes every range comparison unnoticed (and a NaN duration never ends)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise UsageError(f"{name} must be a finite number in {interval}, not {value!r}", name)
    return v


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def check_ignore(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError("ignore must be a collection of violation names, not one string")
    names = frozenset(value)
    unknown = sorted(str(n) for n in names - set(VIOLATIONS))
    if unknown:
        raise UsageError(
            f"ignore: unknown violation {unknown[0]!r}; known: {', '.join(VIOLATIONS)}", "ignore"
        )
    return names


def check_db(value: object) -> str | None:
    """A failure-database directory: None, or a path that is not an existing file.

    The string ``off`` is None, as on the command line: a library caller who writes
    what the CLI takes must not get a directory named ``off``."""
    if value is None or value == OFF:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"db must be a directory path or None, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path.strip():
        raise UsageError("db must name a directory", "db")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"db {path} exists and is not a directory", "db")
    return os.path.abspath(path)


def check_variant(value: object) -> str:
    """The spec, with a variant file's path made absolute (so schedules replay anywhere)."""
    if not isinstance(value, str):
        raise TypeError(f"variant must be a spec string, not {type(value).__name__}")
    spec = value.strip()
    if not spec:
        raise UsageError("variant must name a variant", "variant")
    path = variant_file(spec)
    if path is not None and os.path.exists(path) and not os.path.isabs(path):
        return os.path.abspath(path) + spec[len(path) :]
    return spec


def check_pages(pages_per_range: object, cpus: int) -> None:
    check_int("pages_per_range", pages_per_range, 1, tdx.PAGES_PER_2M)
    assert isinstance(pages_per_range, int)
    if pages_per_range < cpus:
        raise UsageError(
            f"pages_per_range ({pages_per_range}) must be at least cpus ({cpus}):"
            " every CPU needs its own 4 KiB page in each range",
            "pages_per_range",
        )


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # resolving defaults of a frozen dataclass


#: seconds between fresh starts of a stress run (see StressConfig.epoch)
DEFAULT_EPOCH: Final = 0.5


@dataclass(frozen=True)
class StressConfig:
    """A free-running run of one variant: N CPUs loop get / AUG / hold / RECLAIM / put."""

    variant: str
    cpus: int = 4
    ranges: int = 2
    #: 4 KiB page slots used per range; None = two per CPU
    pages_per_range: int | None = None
    #: seconds; None = DEFAULT_STRESS_SECONDS unless ``iterations`` is given
    duration: float | None = None
    #: get/put rounds per CPU instead of a duration
    iterations: int | None = None
    seed: int = 0
    #: probability of a chaos delay (targeted: the base rate the adaptive weights scale)
    chaos: float = 0.0
    #: "targeted" (delays aimed at uncovered race windows) or "uniform" (any primitive)
    chaos_mode: str = "targeted"
    #: fault-injection spec, e.g. ``add.busy=0.1,alloc.fail=0.02``
    faults: str = ""
    #: probability that a pick goes to range 0, the hot range
    hot: float = 0.7
    #: longest time a CPU holds an assigned page
    hold_us: int = 50
    #: AUG/RECLAIM the page between get and put (False: the protocol alone)
    use_page: bool = True
    #: a module that does not answer within this many seconds is hung
    seamcall_timeout: float = 10.0
    #: violation names that alone do not make the verdict a failure
    ignore: frozenset[str] = field(default_factory=frozenset)
    #: seconds between fresh starts (every CPU pauses between rounds, quiescence is
    #: checked, the refcounts, pool and module return to their initial state); 0: one
    #: start for the whole run. Off while faults are injected (a page a refused
    #: RECLAIM keeps stays in use across rounds).
    epoch: float = DEFAULT_EPOCH
    #: failure database directory: its schedules of this variant are replayed before
    #: the run (free-running stress finds no schedule, so it stores none); None = none
    db: str | None = None

    def __post_init__(self) -> None:
        _set(self, "variant", check_variant(self.variant))
        _set(self, "db", check_db(self.db))
        check_int("cpus", self.cpus, 1, MAX_STRESS_CPUS)
        check_int("ranges", self.ranges, 1, 4096)
        if self.pages_per_range is None:
            _set(self, "pages_per_range", min(tdx.PAGES_PER_2M, 2 * self.cpus))
        check_pages(self.pages_per_range, self.cpus)
        if self.duration is not None and self.iterations is not None:
            raise UsageError("give either duration or iterations, not both", "duration")
        if self.iterations is not None:
            check_int("iterations", self.iterations, 1)
        elif self.duration is None:
            _set(self, "duration", DEFAULT_STRESS_SECONDS)
        else:
            _set(self, "duration", check_float("duration", self.duration, 0, 86400, True))
        check_int("seed", self.seed, 0, MAX_SEED)
        _set(self, "chaos", check_float("chaos", self.chaos, 0.0, 1.0))
        if self.chaos_mode not in CHAOS_MODES:
            raise UsageError(
                f"chaos_mode must be one of {', '.join(CHAOS_MODES)}, not {self.chaos_mode!r}",
                "chaos_mode",
            )
        _set(self, "hot", check_float("hot", self.hot, 0.0, 1.0))
        _set(self, "epoch", check_float("epoch", self.epoch, 0.0, 86400))
        check_int("hold_us", self.hold_us, 0, 1_000_000)
        check_bool("use_page", self.use_page)
        _set(
            self,
            "seamcall_timeout",
            check_float("seamcall_timeout", self.seamcall_timeout, 0, 3600, True),
        )
        if not isinstance(self.faults, str):
            raise TypeError(f"faults must be a string, not {type(self.faults).__name__}")
        try:
            FaultPlan.parse(self.faults, self.seed)
        except ValueError as e:
            raise UsageError(f"faults: {e}", "faults") from None
        _set(self, "ignore", check_ignore(self.ignore))

    @property
    def pages(self) -> int:
        assert self.pages_per_range is not None  # resolved in __post_init__
        return self.pages_per_range

    @property
    def seconds(self) -> float:
        """Planned wall time (0 in iteration mode)."""
        return self.duration or 0.0


@dataclass(frozen=True)
class Scenario:
    """The small world an exploration runs in; every schedule string records it."""

    variant: str
    cpus: int = 2
    rounds: int = 2
    ranges: int = 1
    #: page slots per range; None = one per CPU
    pages_per_range: int | None = None
    #: short hash of the variant file's source; "" = take it from the file now
    source: str = ""

    def __post_init__(self) -> None:
        _set(self, "variant", check_variant(self.variant))
        if not self.source:
            _set(self, "source", source_hash(self.variant))
        check_int("cpus", self.cpus, 1, MAX_EXPLORE_CPUS)
        check_int("rounds", self.rounds, 1, 100)
        check_int("ranges", self.ranges, 1, 64)
        if self.pages_per_range is None:
            _set(self, "pages_per_range", self.cpus)
        check_pages(self.pages_per_range, self.cpus)

    @property
    def pages(self) -> int:
        assert self.pages_per_range is not None  # resolved in __post_init__
        return self.pages_per_range

    @property
    def max_steps(self) -> int:
        """Steps after which an execution is called a livelock, sized from the scenario."""
        return STEPS_PER_ROUND * self.cpus * self.rounds + 1000

    def schedule(
        self, seed: int, steps: tuple[int, ...], faults: tuple[tuple[int, int, int], ...] = ()
    ) -> Schedule:
        """The schedule string of one execution: a variant file named short (relative to
        the working directory, see :mod:`shmpamt.records.variant_files`), with its hash."""
        return Schedule(
            variant=short_spec(self.variant),
            cpus=self.cpus,
            rounds=self.rounds,
            ranges=self.ranges,
            pages=self.pages,
            seed=seed,
            steps=steps,
            source=self.source,
            faults=faults,
        )

    @classmethod
    def of(cls, s: Schedule) -> Scenario:
        """The scenario a schedule was found in, its variant file located from here
        (VariantLoadError when it is neither here nor where it was recorded)."""
        return cls(found(s).spec or "", s.cpus, s.rounds, s.ranges, s.pages, s.source)


#: the C twins of the built-ins (``rfc.c``...): names, not files in the working directory
_TWINS_DIR: Final = Path(__file__).resolve().parent / "variants" / "c"


def builtin_twin(name: str) -> bool:
    """Whether ``name`` is a built-in C twin, which the registry loads by name first."""
    return "/" not in name and name.endswith(".c") and (_TWINS_DIR / name).is_file()


def found(s: Schedule) -> Located:
    """Where a schedule's variant is (VariantLoadError: nowhere)."""
    if builtin_twin(s.variant):
        return Located(s.variant)
    where = locate(s.variant, s.source)
    if where.spec is None:
        raise VariantLoadError(not_found(s.variant, s.source))
    return where


@dataclass(frozen=True)
class ExploreConfig:
    """A controlled-scheduling search over one variant in a small scenario."""

    variant: str
    strategy: str = DEFAULT_STRATEGY
    cpus: int = 2
    rounds: int = 2
    ranges: int = 1
    #: PCT bug depth d
    depth: int = 2
    #: preemption bound of dfs and dpor; None = the strategy's default (dfs 2, dpor none)
    preemptions: int | None = None
    #: seconds to search; None = DEFAULT_EXPLORE_BUDGET unless ``executions`` is given
    budget: float | None = None
    #: stop after this many executions
    executions: int | None = None
    seed: int = 0
    #: shrink each failing schedule before reporting it
    minimize: bool = True
    #: violation names that alone do not make an execution fail
    ignore: frozenset[str] = field(default_factory=frozenset)
    #: stop at the first failing execution instead of collecting every kind
    first: bool = False
    #: explorers searching at once, one per core; None = every usable core (1 under xdist)
    jobs: int | None = None
    #: run each explorer's controller, CPUs and daemon on one core
    pin: bool = True
    #: failure database directory: its schedules of this variant are replayed before
    #: the search and the search's failures are stored in it; None = no database
    db: str | None = None
    #: faults the search may inject, in stress's grammar (module/faults.py) without
    #: delays; "default": every kind in the portfolio, none in a named strategy
    #: (see explore_faults and fault_probabilities), "none": no fault
    faults: str = "default"
    #: most injected faults per execution
    max_faults: int = 1
    #: dpor: try one of interchangeable CPUs first (:mod:`shmpamt.schedulers.symmetry`)
    symmetry: bool = True
    #: dpor: each execution's search ends at its first violation (schedulers/dpor.py)
    halt_at_violation: bool = False

    def __post_init__(self) -> None:
        _set(self, "variant", check_variant(self.variant))
        if not isinstance(self.faults, str):
            raise TypeError(f"faults must be a string, not {type(self.faults).__name__}")
        explore_faults(self.faults)
        check_int("max_faults", self.max_faults, 0, MAX_FAULTS)
        check_bool("first", self.first)
        check_bool("symmetry", self.symmetry)
        check_bool("halt_at_violation", self.halt_at_violation)
        check_bool("pin", self.pin)
        if self.jobs is None:
            _set(self, "jobs", default_jobs())
        check_int("jobs", self.jobs, 1, 64)
        _set(self, "db", check_db(self.db))
        if self.strategy not in STRATEGIES:
            raise UsageError(
                f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}",
                "strategy",
            )
        if self.halt_at_violation and self.strategy != "dpor":
            raise UsageError(
                f"halting at the first violation is a dpor search's, not {self.strategy}'s",
                "halt_at_violation",
            )
        check_int("depth", self.depth, 1, 10)
        if self.preemptions is not None:
            check_int("preemptions", self.preemptions, 0, 50)
        if self.executions is not None:
            check_int("executions", self.executions, 1)
        if self.budget is not None:
            _set(self, "budget", check_float("budget", self.budget, 0, 86400, True))
        elif self.executions is None:
            _set(self, "budget", DEFAULT_EXPLORE_BUDGET)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_bool("minimize", self.minimize)
        _set(self, "ignore", check_ignore(self.ignore))
        self.scenario  # noqa: B018  (validates cpus, rounds, ranges)

    @cached_property  # parsed and hashed once, not per use
    def scenario(self) -> Scenario:
        return Scenario(self.variant, self.cpus, self.rounds, self.ranges)

    @property
    def seconds(self) -> float:
        """Time budget in seconds (0: none, the executions bound the search)."""
        return self.budget or 0.0

    @property
    def fault_probabilities(self) -> dict[str, float]:
        """Kind -> probability per fault point; empty: the happy-path search. The
        default injects only in the default strategy (the portfolio): a strategy
        named on its own searches what it did before --faults existed."""
        if not self.max_faults or (self.faults == "default" and self.strategy != "portfolio"):
            return {}
        return explore_faults(self.faults)

    @property
    def fault_share(self) -> float:
        """Share of a sampler's executions that may get faults: all when asked for,
        DEFAULT_SHARE by default (the rest keep searching the happy path)."""
        return DEFAULT_SHARE if self.faults == "default" else 1.0


def explore_faults(spec: str) -> dict[str, float]:
    """The fault kinds a search may inject, with their probabilities per fault point.

    ``spec`` is stress's grammar (``add.busy=0.2,alloc.fail=0.1``, ``*.busy=P``);
    ``default``: every kind at DEFAULT_PROBABILITY; ``none``: nothing. A delay is not
    a choice of the search (explore's steps take no time): UsageError.
    """
    if spec.strip() == "default":
        return dict.fromkeys(FAULT_KINDS, DEFAULT_PROBABILITY)
    try:
        plan = FaultPlan.parse(spec, 0)
    except ValueError as e:
        raise UsageError(f"faults: {e}", "faults") from None
    out: dict[str, float] = {}
    names = {v: k for k, v in LEAF_KEYS.items()}
    for leaf, f in plan.leaves:
        if f.delay_p or f.delay_after_p:
            raise UsageError(
                f"faults: {names[leaf]}.delay: explore injects outcomes, not delays "
                "(its steps take no time); use it with stress",
                "faults",
            )
        if f.busy:
            out[f"{names[leaf]}.busy"] = f.busy
    if plan.alloc_fail:
        out["alloc.fail"] = plan.alloc_fail
    return out


@dataclass(frozen=True)
class ReplayConfig:
    """Re-run one schedule string, ``times`` times."""

    schedule: str
    times: int = 1
    #: shrink the schedule while it still fails
    minimize: bool = False
    #: run the controller, CPUs and daemon on one core
    pin: bool = True

    def __post_init__(self) -> None:
        check_bool("pin", self.pin)
        if not isinstance(self.schedule, str):
            raise TypeError(f"schedule must be a string, not {type(self.schedule).__name__}")
        check_int("times", self.times, 1, 1000)
        check_bool("minimize", self.minimize)
        try:
            parsed = Schedule.parse(self.schedule)
        except ScheduleError as e:
            raise ScheduleError(f"bad schedule string: {e}") from None
        try:
            Scenario.of(parsed)
        except VariantLoadError as e:
            raise VariantLoadError(f"the schedule's variant cannot be loaded: {e}") from None
        except UsageError as e:
            raise UsageError(f"schedule does not fit: {e}") from None

    @cached_property  # parsed and hashed once, not per use
    def parsed(self) -> Schedule:
        return Schedule.parse(self.schedule)

    @cached_property  # parsed and hashed once, not per use
    def scenario(self) -> Scenario:
        return Scenario.of(self.parsed)

    def source_changed(self) -> str:
        """A note when the variant file was not taken as named: it came from where the
        schedule was recorded, or its source differs from the recorded hash."""
        return found(self.parsed).note


#: what a stress campaign runs per variant
CAMPAIGN_MODES: Final = ("both", "stress", "explore")
#: share of each variant's seconds that free-running stress gets in mode "both"
STRESS_SHARE: Final = 0.5
#: chaos of the default campaign (mode "both") when none is given: the main job widens
#: race windows with targeted delays
DEFAULT_CAMPAIGN_CHAOS: Final = 0.3


@dataclass(frozen=True)
class StressCampaign:
    """What ``shmpamt stress`` runs over several variants: for each, free-running stress,
    the explore search, or both (the default campaign, half of the seconds each).

    Free-running stress has real parallelism but cannot replay what it finds; explore
    can. Mode "both" gives every variant the two views, and the report merges them per
    variant (:func:`shmpamt.records.verdict.verdicts`). Validated here, once: ``configs``
    are the runs in order, each already a validated configuration.
    """

    variants: tuple[str, ...]
    mode: str = "both"
    seed: int = 0
    #: None = DEFAULT_CAMPAIGN_CHAOS in mode "both", none otherwise
    chaos: float | None = None
    #: further StressConfig settings (cpus, ranges, duration, faults, ignore, ...)
    stress: Mapping[str, Any] = field(default_factory=dict)
    #: failure database directory, or None: each variant's stored failures are replayed
    #: first (by its search when it has one, else before its free-running run), and
    #: what the search finds is stored (free-running stress has no schedule to store)
    db: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.variants, str) or not self.variants:
            raise UsageError("variants: name at least one variant", "variant")
        _set(self, "db", check_db(self.db))
        _set(self, "variants", tuple(check_variant(v) for v in self.variants))
        if self.mode not in CAMPAIGN_MODES:
            raise UsageError(f"mode must be one of {', '.join(CAMPAIGN_MODES)}", "mode")
        settings = dict(self.stress)
        if self.mode != "stress" and settings.get("iterations"):
            raise UsageError(
                f"iterations needs mode stress (mode {self.mode} splits seconds)", "iterations"
            )
        _ = self.configs  # every run is validated now, not when it starts

    @cached_property
    def configs(self) -> tuple[tuple[StressConfig | None, ExploreConfig | None], ...]:
        """Per variant: its free-running run and its search (None where the mode has none)."""
        chaos = self.chaos
        if chaos is None:
            chaos = DEFAULT_CAMPAIGN_CHAOS if self.mode == "both" else 0.0
        settings = dict(self.stress)
        runs: list[tuple[StressConfig | None, ExploreConfig | None]] = []
        for spec in self.variants:
            # Validated as given, then split: an error names the seconds the user wrote.
            c = StressConfig(spec, seed=self.seed, chaos=chaos, **settings)
            total = c.seconds
            stress: StressConfig | None = c
            explore: ExploreConfig | None = None
            if self.mode == "both":
                stress = replace(c, duration=total * STRESS_SHARE)
            if self.mode == "stress":
                stress = replace(c, db=self.db)  # the only part: it replays the stored ones
            else:
                explore = ExploreConfig(
                    c.variant,
                    budget=total * (1 - STRESS_SHARE if self.mode == "both" else 1),
                    seed=self.seed,
                    minimize=False,  # the campaign's time goes to searching; replay shrinks
                    ignore=c.ignore,
                    db=self.db,  # replays the stored failures first, stores what it finds
                )
            runs.append((stress if self.mode != "explore" else None, explore))
        return tuple(runs)
