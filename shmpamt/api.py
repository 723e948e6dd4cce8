"""The library API: run a variant under stress or explore and get a verdict back.

    import shmpamt

    result = shmpamt.explore("rfc-norecheck", executions=500, seed=1)
    if not result.ok:
        print(result.verdict, result.replay_commands)

A variant is a built-in name, a ``path/file.py:Class`` / ``package.module:Class``
spec, or a :class:`~shmpamt.variants.base.PamtVariant` subclass object (it must
be importable by the spawned CPU processes: defined at module level in a file).
Keyword settings are the fields of :class:`~shmpamt.config.StressConfig` /
:class:`~shmpamt.config.ExploreConfig`, validated there; bad values raise
:class:`~shmpamt.errors.UsageError` (a ``ValueError``) or ``TypeError`` before
any process starts.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, overload

from shmpamt.config import ExploreConfig, ReplayConfig, StressConfig
from shmpamt.engine.stress import StressProgress, run_stress
from shmpamt.errors import DatabaseError, ShmpamtError, UsageError, VariantLoadError
from shmpamt.explorer.jobs import run_search
from shmpamt.explorer.regress import Stored, fold, replay_stored
from shmpamt.explorer.search import ExploreProgress, run_replay
from shmpamt.machine.janitor import clean
from shmpamt.records.execution import Execution
from shmpamt.records.faildb import DB_NOTE, Entry, FailureDB
from shmpamt.records.results import Finding, Regression, VariantResult, regression_line
from shmpamt.records.variant_files import names_file, variant_file
from shmpamt.records.variant_files import remember as remember_file
from shmpamt.records.violations import Violation, describe
from shmpamt.report.race import race_report
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.probe import needs_probe, probe
from shmpamt.variants.registry import BUILTIN, C_TWINS, describe_variants, load_variant

VariantLike = str | type[PamtVariant]
Config = StressConfig | ExploreConfig | ReplayConfig
__all__ = [
    "ExploreProgress",
    "Result",
    "Stored",
    "StressProgress",
    "ViolationFound",
    "builtin_variants",
    "check_stored",
    "check_variant",
    "clean",
    "default_variants",
    "explore",
    "replay",
    "run",
    "stored_entries",
    "stress",
    "variant_spec",
]


class ViolationFound(ShmpamtError, AssertionError):
    """Raised by :meth:`Result.check`; its message carries the replay commands."""


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
    try:
        path = inspect.getfile(variant)
    except TypeError:
        if variant.__module__ in ("__main__", "__mp_main__"):
            raise
        return f"{variant.__module__}:{variant.__qualname__}"
    # Test files are often not importable by module name in a fresh process:
    # the file path always is.
    return f"{os.path.abspath(path)}:{variant.__qualname__}"


@dataclass(frozen=True)
class Result:
    """What a run found. ``ok``: no violation outside ``ignore`` and no incident."""

    raw: VariantResult

    @property
    def ok(self) -> bool:
        return self.raw.ok

    @property
    def clean(self) -> bool:
        """Nothing at all was seen: no violation (ignored or not), no incident."""
        return self.raw.clean

    @property
    def verdict(self) -> frozenset[str]:
        """The violation names produced, except ignored ones."""
        return frozenset(self.raw.failing)

    @property
    def found(self) -> frozenset[str]:
        """Every violation name produced, ignored or not."""
        return frozenset(self.raw.found)

    @property
    def counts(self) -> Mapping[str, int]:
        """Every violation name with its count (0 for those not seen)."""
        return dict(self.raw.counts)

    @property
    def examples(self) -> Mapping[str, Violation]:
        return dict(self.raw.examples)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.raw.findings

    @property
    def schedules(self) -> tuple[str, ...]:
        return self.raw.schedules

    @property
    def replay_commands(self) -> tuple[str, ...]:
        return tuple(f.replay_command for f in self.raw.findings)

    @property
    def incidents(self) -> tuple[str, ...]:
        return self.raw.incidents

    def to_dict(self) -> dict[str, Any]:
        return self.raw.to_dict()

    def summary(self) -> str:
        r = self.raw
        unit = "get/put rounds" if r.mode == "stress" else "executions"
        if r.clean:
            head = f"{r.variant}: nothing seen in {r.operations} {unit}"
        elif r.failing:
            head = f"{r.variant}: " + ", ".join(f"{n} x{c}" for n, c in sorted(r.failing.items()))
        else:
            head = f"{r.variant}: no violation outside the ignored kinds"
        lines = [head]
        if r.regressions is not None:  # replayed before the search: said before its findings
            lines.append(f"  {regression_line(r.regressions)}")
        for name, v in sorted(r.examples.items()):
            tag = " (ignored)" if name in r.ignored else ""
            lines.append(f"  {name}{tag}: {describe(v)}")
        lines.extend(f"  replay ({f.kind}): {f.replay_command}" for f in r.findings)
        lines.extend(f"  incident: {i}" for i in r.incidents)
        if r.coverage:
            claim = f" ({r.explore.claim})" if r.explore is not None else ""
            lines.append(f"  shown{claim}: {r.coverage}")
        return "\n".join(lines)

    def race_report(self, kind: str = "") -> str:
        """The execution that showed ``kind`` (default: the first finding's) drawn as
        kernel changelogs draw races, plain ASCII within 72 columns
        (:mod:`shmpamt.report.race`); "" when no execution showed it. A replay that
        found nothing draws its whole execution."""
        r = self.raw
        for f in r.findings:
            ex = f.execution
            if ex is not None and (f.kind == kind or not kind) and f.kind in ex.kinds:
                return _race(ex, r.variant, f.kind, f.schedule)
        if not kind and not r.findings and r.shown is not None:
            return _race(r.shown, r.variant, "", "")
        return ""

    def check(self) -> None:
        """Raise :class:`ViolationFound` (an AssertionError) on a violation or an incident."""
        if not self.ok:
            raise ViolationFound(self.summary())


def _race(ex: Execution, variant: str, kind: str, schedule: str) -> str:
    viol = list(zip(ex.violation_steps, ex.violations, strict=True))
    return race_report(ex.trace, viol, variant=variant, kind=kind, schedule=schedule)


def builtin_variants() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in variant, the C twins included."""
    return describe_variants()


def default_variants() -> list[str]:
    """What a campaign with no --variant runs: the eight built-ins (their C twins are the
    same protocols; name them, e.g. rfc.c, to run them)."""
    return list(BUILTIN)


def check_variant(spec: str) -> None:
    """Raise VariantLoadError (one line) unless ``spec`` loads, first in a throwaway
    process (a user's file may exit, hang or raise anything at import), then here."""
    if needs_probe(spec, frozenset(BUILTIN) | frozenset(C_TWINS)):
        probe(spec)
    load_variant(spec)


@overload
def run(
    config: StressConfig,
    *,
    on_progress: Callable[[StressProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result: ...
@overload
def run(
    config: ExploreConfig,
    *,
    on_progress: Callable[[ExploreProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result: ...
@overload
def run(
    config: ReplayConfig,
    *,
    on_progress: None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result: ...
def run(
    config: Config,
    *,
    on_progress: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Result:
    """Run one configuration: the one door every front end goes through."""
    _check_main_guard()
    stop = should_stop or (lambda: False)
    if isinstance(config, ReplayConfig):
        try:  # one clear line before any process starts
            check_variant(config.scenario.variant)
        except VariantLoadError as e:
            raise VariantLoadError(f"the schedule's variant cannot be loaded: {e}") from None
        # Where the file is now, so a string the replay prints resolves anywhere too.
        remember_file(config.scenario.variant)
        return Result(run_replay(config, stop))
    check_variant(config.variant)
    if isinstance(config, StressConfig):
        if config.db is None:
            return Result(run_stress(config, on_progress, stop))
        # The stored failures first, as a search does; free-running stress finds no
        # schedule, so nothing goes back into the database.
        check = _regression_check(FailureDB(config.db), config.variant, config.ignore, stop)
        return Result(check.fold(run_stress(config, on_progress, stop)))
    # Schedule strings name a variant file short: record where it lives.
    remember_file(config.variant)
    if config.db is None:
        return Result(run_search(config, on_progress, stop))
    # Step 1, the regression check: the database's failures of this variant are
    # replayed before any search, so an old race that is back is reported first.
    db = FailureDB(config.db)
    check = _regression_check(db, config.variant, config.ignore, stop)
    # Step 2, the search itself.
    raw = check.fold(run_search(config, on_progress, stop))
    # Step 3: what the search found goes into the database for the next run.
    if check.writable:
        try:
            remember(db, raw)
        except DatabaseError as e:
            why = f"{DB_NOTE}: {e}: this run's failures are not stored"
            raw = replace(raw, notes=(*raw.notes, why))
    return Result(raw)


@dataclass(frozen=True)
class _Check:
    """A regression check's outcome. The database is untrusted and may be unreadable
    or read-only: what goes wrong with it is a note, never a reason not to run."""

    #: every stored schedule's replay; None when the database could not be read
    regressions: list[Regression] | None
    failing: dict[str, tuple[Stored, Execution]]
    notes: tuple[str, ...]
    #: False once a write failed (or the database could not be read): store nothing
    writable: bool

    def fold(self, result: VariantResult) -> VariantResult:
        if self.regressions is not None:
            result = fold(result, self.regressions, self.failing)
        return replace(result, notes=(*result.notes, *self.notes))


def _regression_check(
    db: FailureDB, spec: str, ignore: frozenset[str], stop: Callable[[], bool]
) -> _Check:
    """Replay the database's failures of one variant; those still failing are seen again.
    Each file of the database that is not a usable entry is one note."""
    try:
        entries = [x for x in stored_entries(db, spec) if x.kind not in ignore]
    except DatabaseError as e:
        return _Check(None, {}, (f"{DB_NOTE} not used: {e}",), writable=False)
    notes = [f"{DB_NOTE}: {b.warning()}" for b in db.broken]
    stored = [Stored(x.kind, x.schedule, x.strategy) for x in entries]
    regressions, failing = check_stored(stored, should_stop=stop, variant=spec)
    still = {(r.kind, r.schedule) for r in regressions if r.still_fails}
    try:
        for entry in entries:
            if (entry.kind, entry.schedule) in still:
                db.touch(entry.key)
    except DatabaseError as e:
        notes.append(f"{DB_NOTE}: {e}: nothing stored")
        return _Check(regressions, failing, tuple(notes), writable=False)
    return _Check(regressions, failing, tuple(notes), writable=True)


def stored_entries(db: FailureDB, spec: str) -> list[Entry]:
    """The database's failures of one variant: those whose schedule names it; for a
    variant file, those found on that file, by whatever path the schedule names it
    (schedule strings name files relative to where they were found) and whatever
    the file holds now (a fix is checked against the failures found before it)."""
    if variant_file(spec) is None:
        return db.entries(spec)
    return [e for e in db.entries() if names_file(e.variant, e.source, spec)]


def check_stored(
    stored: list[Stored],
    *,
    should_stop: Callable[[], bool] | None = None,
    variant: str | None = None,
) -> tuple[list[Regression], dict[str, tuple[Stored, Execution]]]:
    """Replay stored failing schedules once each (in the given order): every outcome,
    and per kind the first schedule that still shows it with its execution.
    ``variant``: the variant to replay them on (a variant file's schedules may name it
    by another path, or by an older source); None: the one each schedule names."""
    if not stored:
        return [], {}
    return replay_stored(stored, should_stop or (lambda: False), variant)


def remember(db: FailureDB, result: VariantResult) -> int:
    """Store a result's failing findings (not ignored kinds); how many were new.
    Raises DatabaseError when the database cannot be written."""
    return sum(
        db.add(f.kind, f.schedule, f.strategy)
        for f in result.findings
        if f.kind not in result.ignored and not f.strategy.startswith("stored")
    )


_GUARD = re.compile(r"""if\s+__name__\s*==\s*['"]__main__['"]""")


def _check_main_guard() -> None:
    """A script that calls shmpamt at its top level without a ``__main__`` guard would be
    run again by every spawned process (multiprocessing's bootstrapping error, then a
    daemon that never starts): say what to add, before anything is spawned."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.endswith("__main__"):
        return  # ``python -m pkg``: spawn does not re-import a package's __main__
    inheriting = bool(getattr(mp.current_process(), "_inheriting", False))
    if not inheriting:
        if path is None or not str(path).endswith(".py"):
            return  # an interpreter, -c, pytest's runner: nothing re-imports a script
        called_from_top = any(
            f.f_globals is vars(main) and f.f_code.co_name == "<module>"
            for f in _frames(sys._getframe(1))
        )
        try:
            guarded = bool(_GUARD.search(Path(path).read_text(errors="replace")))
        except OSError:
            return
        if not called_from_top or guarded:
            return
    name = os.path.basename(str(path)) if path else "your script"
    raise UsageError(
        f"{name} runs shmpamt at import time: the CPU processes shmpamt spawns re-import "
        f'{name}, so put the call under  if __name__ == "__main__":'
    )


def _frames(f: FrameType | None) -> Iterator[FrameType]:
    while f is not None:
        yield f
        f = f.f_back


def stress(variant: VariantLike, **settings: Any) -> Result:
    """Free-running stress of one variant (settings: the fields of StressConfig)."""
    return run(StressConfig(variant_spec(variant), **settings))


def explore(variant: VariantLike, **settings: Any) -> Result:
    """Controlled-scheduling search (settings: the fields of ExploreConfig)."""
    return run(ExploreConfig(variant_spec(variant), **settings))


def replay(schedule: str, *, times: int = 1, minimize: bool = False) -> Result:
    """Replay a schedule string ``times`` times; the replays must agree."""
    return run(ReplayConfig(schedule, times=times, minimize=minimize))
