"""The library API: run a variant under stress or explore and get a verdict back.

    import shmpamt

    result = shmpamt.explore("rfc-norecheck", strategy="pct", executions=500, seed=1)
    if not result.ok:
        print(result.verdict, result.replay_commands)

A variant is a built-in name, a ``path/file.py:Class`` / ``package.module:Class``
spec, or a :class:`~shmpamt.variants.base.PamtVariant` subclass object (it must
be importable by the spawned CPU processes: defined at module level in a file).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shmpamt.invariants import Violation, describe
from shmpamt.report import VariantResult
from shmpamt.variants.base import PamtVariant

VariantLike = str | type[PamtVariant]


class ViolationFound(AssertionError):
    """Raised by :meth:`Result.check`; its message carries the replay command."""


def variant_spec(variant: VariantLike) -> str:
    """The string form CPU processes load a variant from."""
    if isinstance(variant, str):
        return variant
    if not (isinstance(variant, type) and issubclass(variant, PamtVariant)):
        raise TypeError(f"expected a variant name or a PamtVariant subclass, got {variant!r}")
    if "<locals>" in variant.__qualname__:
        raise ValueError(
            f"{variant.__qualname__} is defined inside a function; CPU processes cannot "
            "import it: define it at module level"
        )
    module = variant.__module__
    if module not in ("__main__", "__mp_main__"):
        try:
            path = inspect.getfile(variant)
        except TypeError:
            return f"{module}:{variant.__qualname__}"
        # Test files are often not importable by module name in a fresh process:
        # the file path always is.
        return f"{os.path.abspath(path)}:{variant.__qualname__}"
    path = inspect.getfile(variant)
    return f"{os.path.abspath(path)}:{variant.__qualname__}"


@dataclass(frozen=True)
class Result:
    """What a run found. ``ok`` is True when no violation happened."""

    raw: VariantResult

    @property
    def ok(self) -> bool:
        return self.raw.clean

    @property
    def verdict(self) -> frozenset[str]:
        """The set of violation names produced (semantics.md section 4)."""
        return frozenset(self.raw.found)

    @property
    def counts(self) -> Mapping[str, int]:
        return dict(self.raw.found)

    @property
    def examples(self) -> Mapping[str, Violation]:
        return dict(self.raw.examples)

    @property
    def schedules(self) -> tuple[str, ...]:
        return self.raw.schedules

    @property
    def replay_commands(self) -> tuple[str, ...]:
        return tuple(f"shmpamt replay {s}" for s in self.raw.schedules)

    @property
    def incidents(self) -> tuple[str, ...]:
        return self.raw.incidents

    def to_dict(self) -> dict[str, Any]:
        return self.raw.to_dict()

    def summary(self) -> str:
        r = self.raw
        if self.ok:
            head = f"{r.variant}: no violation in {r.operations} {_unit(r)}"
        else:
            found = ", ".join(f"{n} x{c}" for n, c in sorted(r.found.items()))
            head = f"{r.variant}: {found}"
        lines = [head]
        for name, v in sorted(self.examples.items()):
            lines.append(f"  {name}: {describe(v)}")
        lines.extend(f"  replay: {c}" for c in self.replay_commands)
        lines.extend(f"  incident: {i}" for i in r.incidents)
        if r.coverage:
            lines.append(f"  coverage: {r.coverage}")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`ViolationFound` (an AssertionError) if anything was found."""
        if not self.ok:
            raise ViolationFound(self.summary())


def _unit(r: VariantResult) -> str:
    return "executions" if r.mode == "explore" else "get/put rounds"


# --- argument validation: one clear line per bad value, before any process starts ------


def _int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    # bool is an int subclass, but cpus=True is a mistake, not a count
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        limit = f"within {lo}..{hi}" if hi is not None else f"at least {lo}"
        raise ValueError(f"{name} must be {limit}, not {value}")
    return value


def _float(name: str, value: object, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    v = float(value)
    # NaN passes every range comparison unnoticed (and a NaN duration never ends)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be a finite number in {interval}, not {value!r}")
    return v


def _loadable(spec: str) -> None:
    """The variant a spec names must load here, or every CPU process would fail to start."""
    from shmpamt.variants.registry import VariantLoadError, load_variant

    try:
        load_variant(spec)
    except VariantLoadError as e:
        raise ValueError(str(e)) from e


def stress(
    variant: VariantLike,
    *,
    cpus: int = 4,
    ranges: int = 2,
    pages_per_range: int | None = None,
    duration: float | None = None,
    iterations: int | None = None,
    seed: int = 0,
    chaos: float = 0.0,
    faults: str = "",
    hot: float = 0.7,
    hold_us: int = 50,
) -> Result:
    """Free-running stress of one variant for ``duration`` s (default 3) or ``iterations``
    rounds per CPU. Bad arguments raise ValueError/TypeError before any process starts."""
    from shmpamt.module.faults import FaultPlan
    from shmpamt.runner import run_stress, stress_setup

    spec = variant_spec(variant)
    _int("cpus", cpus, 1, 64)
    _int("ranges", ranges, 1, 4096)
    if pages_per_range is not None:
        _int("pages_per_range", pages_per_range, 1, 512)
        if pages_per_range < cpus:
            raise ValueError(
                f"pages_per_range ({pages_per_range}) must be at least cpus ({cpus}):"
                " every CPU needs its own 4 KiB page in each range"
            )
    if duration is not None and iterations is not None:
        raise ValueError("give either duration or iterations, not both")
    if duration is not None:
        _float("duration", duration, 0.0, 86400.0, lo_open=True)
    if iterations is not None:
        _int("iterations", iterations, 1)
    _int("seed", seed, 0, 2**63 - 1)
    _float("chaos", chaos, 0.0, 1.0)
    _float("hot", hot, 0.0, 1.0)
    _int("hold_us", hold_us, 0, 1_000_000)
    if not isinstance(faults, str):
        raise TypeError(f"faults must be a string, not {type(faults).__name__}")
    FaultPlan.parse(faults, seed)  # ValueError naming the bad token
    _loadable(spec)
    workload, config = stress_setup(cpus, ranges, pages_per_range, hot, hold_us, iterations, chaos)
    config.validate()
    dur = 0.0 if iterations else (3.0 if duration is None else duration)
    return Result(run_stress(spec, config, workload, dur, seed, faults))


def explore(
    variant: VariantLike,
    *,
    strategy: str = "pct",
    cpus: int = 2,
    rounds: int = 2,
    ranges: int = 1,
    depth: int = 2,
    preemptions: int = 2,
    budget: float = 10.0,
    executions: int | None = None,
    seed: int = 0,
    minimize: bool = True,
    ignore: frozenset[str] | set[str] | tuple[str, ...] = (),
) -> Result:
    """Controlled-scheduling search; stops at the first failing execution.

    ``ignore``: violation names that alone do not make an execution fail.
    Bad arguments raise ValueError/TypeError before any process starts.
    """
    from shmpamt.invariants import VIOLATIONS
    from shmpamt.session import STRATEGIES, Scenario, run_explore

    spec = variant_spec(variant)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    _int("cpus", cpus, 1, 8)
    _int("rounds", rounds, 1, 100)
    _int("ranges", ranges, 1, 64)
    _int("depth", depth, 1, 10)
    _int("preemptions", preemptions, 0, 50)
    if executions is None:
        _float("budget", budget, 0.0, 86400.0, lo_open=True)
    else:
        _int("executions", executions, 1)
    _int("seed", seed, 0, 2**63 - 1)
    if not isinstance(minimize, bool):
        raise TypeError(f"minimize must be True or False, not {minimize!r}")
    if isinstance(ignore, str):
        raise TypeError("ignore must be a collection of violation names, not one string")
    unknown = sorted(set(ignore) - set(VIOLATIONS))
    if unknown:
        raise ValueError(
            f"ignore: unknown violation {unknown[0]!r}; known: {', '.join(VIOLATIONS)}"
        )
    _loadable(spec)
    scenario = Scenario(spec, cpus=cpus, rounds=rounds, ranges=ranges)
    scenario.validate()
    result, _ = run_explore(
        scenario,
        strategy,
        seed,
        depth=depth,
        preemptions=preemptions,
        budget=budget if executions is None else 0.0,
        executions=executions,
        minimize=minimize,
        ignore=frozenset(ignore),
    )
    return Result(result)


def replay(schedule: str, *, times: int = 1) -> list[Result]:
    """Replay a schedule string ``times`` times; one Result per execution.

    A malformed string raises ScheduleError (a ValueError), an unknown variant or a
    scenario the rig cannot set up ValueError, all before any process starts; a
    well-formed schedule the variant does not follow raises SchedulingError.
    """
    from shmpamt.schedule import Schedule
    from shmpamt.session import Scenario, replay_results

    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a string, not {type(schedule).__name__}")
    _int("times", times, 1, 1000)
    parsed = Schedule.parse(schedule)
    _loadable(parsed.variant)
    Scenario.of(parsed).validate()
    return [Result(r) for r in replay_results(schedule, times)]
