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


def stress(
    variant: VariantLike,
    *,
    cpus: int = 4,
    ranges: int = 2,
    pages_per_range: int | None = None,
    duration: float = 3.0,
    iterations: int | None = None,
    seed: int = 0,
    chaos: float = 0.0,
    faults: str = "",
    hot: float = 0.7,
    hold_us: int = 50,
) -> Result:
    """Free-running stress of one variant for ``duration`` s (or ``iterations`` per CPU)."""
    from shmpamt.cpu import Workload
    from shmpamt.runner import run_stress
    from shmpamt.system import SystemConfig

    spec = variant_spec(variant)
    ppr = pages_per_range if pages_per_range is not None else 2 * cpus
    workload = Workload(
        ranges=ranges,
        pages_per_range=ppr,
        hot=hot,
        hold_us=hold_us,
        iterations=iterations or 0,
        chaos=chaos,
    )
    config = SystemConfig(cpus=cpus, ranges=ranges, pages_per_range=ppr)
    config.validate()
    dur = 0.0 if iterations else duration
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
    """
    from shmpamt.session import Scenario, run_explore

    scenario = Scenario(variant_spec(variant), cpus=cpus, rounds=rounds, ranges=ranges)
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
    """Replay a schedule string ``times`` times; one Result per execution."""
    from shmpamt.session import replay_results

    return [Result(r) for r in replay_results(schedule, times)]
