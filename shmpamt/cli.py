"""The ``shmpamt`` command line.

Exit status everywhere: 0 no violation, 1 violations found, 2 bad usage or an
internal failure (one clear line, never a traceback), 130/143 when stopped by
SIGINT/SIGTERM (after a partial report and full cleanup).
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from shmpamt.report import EXIT_ERROR, Campaign

VIOLATION_NAMES = (
    "use_without_pamt",
    "remove_while_in_use",
    "remove_absent",
    "add_present",
    "get_failed",
    "quiescent_mismatch",
    "pamt_pages_lost",
    "lock_leaked",
)  # fmt: skip  (== invariants.VIOLATIONS; kept literal so --help imports nothing heavy)
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line when piped
# A log file or pipe gets 120 columns instead of rich's 80, so reports stay tables.
out_console = Console(width=None if sys.stdout.isatty() else 120)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets "nan" through (every comparison with NaN is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if isinstance(rv, float) and math.isnan(rv):
            self.fail(f"{value!r} is not a number", param, ctx)
        return rv


def fail(msg: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {msg}", highlight=False)
    sys.exit(EXIT_ERROR)


class Interrupt:
    """SIGINT/SIGTERM become a flag the runners poll, so cleanup always runs."""

    def __init__(self) -> None:
        self.signal = ""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return bool(self.signal)


@contextmanager
def trapped_signals() -> Iterator[Interrupt]:
    flag = Interrupt()
    old = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def check_json_path(path: Path | None) -> None:
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        fail(f"--json {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        fail(f"--json {path}: folder {parent} is not writable")
    if path.is_dir():
        fail(f"--json {path} is a folder")


def resolve_variants(specs: tuple[str, ...]) -> list[str]:
    from shmpamt.variants.registry import BUILTIN, VariantLoadError, load_variant

    if not specs:
        return list(BUILTIN)
    for spec in specs:
        try:
            load_variant(spec)
        except VariantLoadError as e:
            fail(str(e))
    return list(specs)


def finish(campaign: Campaign, json_path: Path | None) -> NoReturn:
    campaign.render(out_console)
    if json_path is not None:
        try:
            campaign.write_json(json_path)
        except OSError as e:
            fail(f"cannot write {json_path}: {e}")
        out_console.print(f"JSON report written to {json_path}")
    sys.exit(campaign.exit_code())


def run_guarded(fn: Callable[[], Any], campaign: Campaign) -> None:
    """Turn internal failures into one clear line in the report (exit 2)."""
    from shmpamt.ipc import IpcError
    from shmpamt.lock import LockError

    try:
        fn()
    except ValueError as e:
        fail(str(e))
    except (IpcError, LockError, OSError, RuntimeError) as e:
        campaign.error = f"{type(e).__name__}: {e}"
    except Exception as e:
        # A bug in the rig itself: one line by default, the traceback on request.
        if os.environ.get("SHMPAMT_DEBUG"):
            raise
        campaign.error = f"internal error: {type(e).__name__}: {e} (SHMPAMT_DEBUG=1 shows where)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shmpamt")
def main() -> None:
    """Torture-test rig for the TDX Dynamic PAMT refcount helpers."""


# Options several commands share, spelled once.
JSON_OPTION = click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the result as JSON here.",
)
HTML_OPTION = click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the failing execution's timeline as a self-contained HTML file.",
)


@main.command()
def variants() -> None:
    """List the built-in variants."""
    from shmpamt.variants.registry import describe_variants

    for name, desc in describe_variants():
        click.echo(f"{name:24} {desc}")


@main.command()
@click.option(
    "--variant",
    "variant_specs",
    multiple=True,
    metavar="NAME",
    help="Built-in name, path/to/file.py:Class or package.module:Class (repeatable). "
    "Default: every built-in variant.",
)
@click.option("--cpus", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option(
    "--ranges",
    type=click.IntRange(1, 4096),
    default=2,
    show_default=True,
    help="2 MiB ranges (range 0 is the hot one).",
)
@click.option(
    "--pages-per-range",
    type=click.IntRange(1, 512),
    default=None,
    help="4 KiB pages used per range (>= --cpus). Default: 2 x cpus.",
)
@click.option(
    "--hot",
    type=FiniteFloatRange(0, 1),
    default=0.7,
    show_default=True,
    help="Probability that a pick goes to the hot range.",
)
@click.option(
    "--hold-us",
    type=click.IntRange(0, 1_000_000),
    default=50,
    show_default=True,
    help="Longest time a CPU holds an assigned page.",
)
@click.option(
    "--duration",
    type=FiniteFloatRange(0.1, 86400),
    default=None,
    help="Seconds per variant. Default: about a minute for the whole campaign.",
)
@click.option(
    "--iterations",
    type=click.IntRange(1),
    default=None,
    help="get/put rounds per CPU instead of a duration.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=None,
    help="Seed of every random choice. Default: random, printed.",
)
@click.option(
    "--chaos",
    type=FiniteFloatRange(0, 1),
    default=None,
    is_flag=False,
    flag_value=0.3,
    help="Random delays/yields at every primitive, with this probability (flag alone: 0.3).",
)
@click.option(
    "--faults",
    "fault_spec",
    default="",
    metavar="SPEC",
    help="Fault injection, e.g. 'add.busy=0.1,aug.delay=0.2:0.001,alloc.fail=0.01'.",
)
@JSON_OPTION
def stress(
    variant_specs: tuple[str, ...],
    cpus: int,
    ranges: int,
    pages_per_range: int | None,
    hot: float,
    hold_us: int,
    duration: float | None,
    iterations: int | None,
    seed: int | None,
    chaos: float | None,
    fault_spec: str,
    json_path: Path | None,
) -> None:
    """Free-running multiprocess stress over one or more variants."""
    from shmpamt.module.faults import FaultPlan
    from shmpamt.runner import Progress as Tick
    from shmpamt.runner import run_stress, stress_setup

    check_json_path(json_path)
    if duration is not None and iterations is not None:
        fail("give either --duration or --iterations, not both")
    specs = resolve_variants(variant_specs)
    seed = random.randrange(2**32) if seed is None else seed
    try:
        FaultPlan.parse(fault_spec, seed)
    except ValueError as e:
        fail(f"--faults: {e}")
    if duration is None and iterations is None:
        duration = max(5.0, 56.0 / len(specs))
    workload, config = stress_setup(
        cpus, ranges, pages_per_range, hot, hold_us, iterations, chaos or 0.0
    )
    try:
        workload.validate(cpus)
        config.validate()
    except ValueError as e:
        fail(str(e))
    out_console.print(
        f"shmpamt stress: {len(specs)} variant(s), {cpus} CPUs, {ranges} ranges, seed {seed}"
        + (f", chaos {chaos}" if chaos else "")
        + (f", faults {fault_spec}" if fault_spec else "")
    )
    campaign = Campaign()
    with (
        trapped_signals() as interrupted,
        Progress(
            TextColumn("{task.description:24}"),
            BarColumn(),
            TextColumn("{task.fields[rate]:>10} ops/s"),
            TextColumn("{task.fields[viol]:>5} violations"),
            TimeRemainingColumn(),
            console=out_console,
            transient=False,
        ) as bar,
    ):

        def run_all() -> None:
            for spec in specs:
                if interrupted:
                    break
                task = bar.add_task(
                    spec, total=duration or (iterations or 0) * cpus, rate="-", viol=0
                )

                def tick(p: Tick, task: Any = task) -> None:
                    rate = f"{p.operations / p.elapsed:,.0f}" if p.elapsed > 0 else "-"
                    done = p.elapsed if p.total else p.operations
                    bar.update(task, completed=done, rate=rate, viol=p.violations)

                res = run_stress(
                    spec,
                    config,
                    workload,
                    duration or 0.0,
                    seed,
                    fault_spec,
                    on_progress=tick,
                    should_stop=lambda: bool(interrupted),
                )
                bar.update(task, completed=duration or res.operations)
                campaign.results.append(res)

        run_guarded(run_all, campaign)
        campaign.interrupted = interrupted.signal
    finish(campaign, json_path)


@main.command("clean")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def clean_cmd(dry_run: bool) -> None:
    """Remove IPC objects left by shmpamt runs whose process is gone."""
    from shmpamt.janitor import clean

    gone, kept = clean(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for lo in gone:
        click.echo(f"{verb} {lo.kind} {lo.name} (creator pid {lo.pid} is gone)")
    for lo in kept:
        why = "creator is alive" if lo.alive else "owned by another user"
        click.echo(f"kept {lo.kind} {lo.name} ({why})")
    click.echo(f"{len(gone)} {verb}, {len(kept)} kept")


def _timeline(ex: Any, cpus: int, title: str, html: Path | None) -> None:
    from shmpamt.timeline import render, write_html

    events = ex.trace
    viol = list(zip(ex.violation_steps, ex.violations, strict=True))
    out_console.print(render(events, viol, cpus=cpus, title=title))
    if html is not None:
        write_html(html, events, viol, cpus=cpus, title=title)
        out_console.print(f"timeline written to {html}")


def _check_html_path(path: Path | None) -> None:
    if path is not None and not (path.parent if str(path.parent) else Path(".")).is_dir():
        fail(f"--html {path}: folder {path.parent} does not exist")


@main.command()
@click.option(
    "--variant",
    "variant_spec",
    required=True,
    metavar="NAME",
    help="Built-in name, path/to/file.py:Class or package.module:Class.",
)
@click.option(
    "--strategy", type=click.Choice(["random", "pct", "dfs"]), default="pct", show_default=True
)
@click.option(
    "--depth", type=click.IntRange(1, 10), default=2, show_default=True, help="PCT bug depth d."
)
@click.option(
    "--preemptions",
    type=click.IntRange(0, 50),
    default=2,
    show_default=True,
    help="DFS preemption bound.",
)
@click.option("--cpus", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(1, 100),
    default=2,
    show_default=True,
    help="get/use/put rounds per CPU per execution.",
)
@click.option("--ranges", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option(
    "--budget",
    type=FiniteFloatRange(0.1, 86400),
    default=None,
    help="Seconds to search (default 20 unless --executions is given).",
)
@click.option(
    "--executions", type=click.IntRange(1), default=None, help="Stop after this many executions."
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=None,
    help="Strategy seed. Default: random, printed.",
)
@click.option("--no-minimize", is_flag=True, help="Do not shrink the failing schedule.")
@click.option(
    "--ignore",
    "ignore",
    multiple=True,
    type=click.Choice(VIOLATION_NAMES),
    help="An execution whose only violations are of this kind is not a failure "
    "(e.g. add_present, which rfc/v4 treat as an expected race). Repeatable.",
)
@JSON_OPTION
@HTML_OPTION
def explore(
    variant_spec: str,
    strategy: str,
    depth: int,
    preemptions: int,
    cpus: int,
    rounds: int,
    ranges: int,
    budget: float | None,
    executions: int | None,
    seed: int | None,
    no_minimize: bool,
    ignore: tuple[str, ...],
    json_path: Path | None,
    html_path: Path | None,
) -> None:
    """Controlled scheduling: the rig chooses every interleaving."""
    from shmpamt.scheduling import ExploreError
    from shmpamt.session import ExploreProgress, Scenario, run_explore

    check_json_path(json_path)
    _check_html_path(html_path)
    resolve_variants((variant_spec,))
    seed = random.randrange(2**32) if seed is None else seed
    if budget is None and executions is None:
        budget = 20.0
    scenario = Scenario(variant_spec, cpus=cpus, rounds=rounds, ranges=ranges)
    try:
        scenario.validate()
    except ValueError as e:
        fail(str(e))
    out_console.print(
        f"shmpamt explore: {variant_spec}, strategy {strategy}"
        + (f" d={depth}" if strategy == "pct" else "")
        + (f" preemptions<={preemptions}" if strategy == "dfs" else "")
        + f", {cpus} CPUs x {rounds} rounds, {ranges} range(s), seed {seed}"
    )
    campaign = Campaign()
    failure: Any = None
    with (
        trapped_signals() as interrupted,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[execs]:>7} executions {task.fields[rate]:>7}/s"),
            TextColumn("{task.fields[distinct]:>7} distinct"),
            TextColumn("{task.fields[viol]} violations"),
            TimeRemainingColumn(),
            console=out_console,
        ) as bar,
    ):
        task = bar.add_task(
            variant_spec, total=budget or executions, execs=0, rate="-", distinct=0, viol=0
        )

        def tick(p: ExploreProgress) -> None:
            rate = f"{p.executions / p.elapsed:,.0f}" if p.elapsed > 0 else "-"
            bar.update(
                task,
                completed=p.elapsed if budget else p.executions,
                execs=p.executions,
                rate=rate,
                distinct=p.distinct,
                viol=p.violations,
            )

        def go() -> None:
            nonlocal failure
            try:
                res, failure = run_explore(
                    scenario,
                    strategy,
                    seed,
                    depth=depth,
                    preemptions=preemptions,
                    budget=budget or 0.0,
                    executions=executions,
                    minimize=not no_minimize,
                    ignore=frozenset(ignore),
                    on_progress=tick,
                    should_stop=lambda: bool(interrupted),
                )
            except ExploreError as e:
                campaign.error = str(e)
                return
            campaign.results.append(res)

        run_guarded(go, campaign)
        campaign.interrupted = interrupted.signal
    if failure is not None:
        shown = failure.minimized or failure.schedule
        ex = failure.minimized_execution or failure.execution
        out_console.print(
            f"first failing schedule ({len(failure.schedule.steps)} steps): "
            f"{failure.schedule.encode()}"
        )
        if failure.minimized is not None:
            out_console.print(
                f"minimised to {len(shown.steps)} steps, {shown.preemptions()} preemption(s)"
            )
        _timeline(ex, cpus, f"{variant_spec}: {shown.encode()}", html_path)
        out_console.print(f"replay with: [cyan]{shown.replay_command()}[/cyan]")
    finish(campaign, json_path)


@main.command()
@click.argument("schedule")
@click.option(
    "--minimize",
    "do_minimize",
    is_flag=True,
    help="Shrink the schedule while it still fails, and print the result.",
)
@click.option(
    "--times",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Replay this many times and check every replay agrees.",
)
@HTML_OPTION
@JSON_OPTION
def replay(
    schedule: str, do_minimize: bool, times: int, html_path: Path | None, json_path: Path | None
) -> None:
    """Re-run one schedule string deterministically (exit 1 if it fails)."""
    from shmpamt.report import VariantResult
    from shmpamt.schedule import Schedule, ScheduleError
    from shmpamt.schedulers.base import SchedulingError
    from shmpamt.scheduling import ExploreError
    from shmpamt.session import (
        Failure,
        Scenario,
        Session,
        execution_counts,
        first_violation,
        minimize_failure,
        replay_once,
    )

    check_json_path(json_path)
    _check_html_path(html_path)
    try:
        sched = Schedule.parse(schedule)
    except ScheduleError as e:
        fail(f"bad schedule string: {e}")
    resolve_variants((sched.variant,))
    campaign = Campaign()
    try:
        scenario = Scenario.of(sched)
        scenario.validate()
    except ValueError as e:
        fail(f"schedule does not fit: {e}")
    with trapped_signals() as interrupted:
        try:
            with Session(scenario) as session:
                outcomes = []
                ex = None
                for _ in range(times):
                    if interrupted:
                        break
                    ex = replay_once(session, sched)
                    outcomes.append(first_violation(ex))
                if ex is None:
                    campaign.interrupted = interrupted.signal
                    finish(campaign, json_path)
                if len(set(outcomes)) > 1:
                    campaign.error = f"replays disagree: {outcomes} (nondeterminism)"
                shown, shown_ex = sched, ex
                if do_minimize and ex.failed:
                    f = Failure(sched, ex)
                    minimize_failure(session, f)
                    assert f.minimized is not None and f.minimized_execution is not None
                    shown, shown_ex = f.minimized, f.minimized_execution
                    out_console.print(
                        f"minimised: {len(sched.steps)} -> {len(shown.steps)} steps, "
                        f"{shown.preemptions()} preemption(s)"
                    )
                _timeline(
                    shown_ex, sched.cpus, f"{session.variant_name}: {shown.encode()}", html_path
                )
                fv = first_violation(shown_ex)
                if fv is None:
                    out_console.print(f"replayed {len(outcomes)}x: no violation")
                else:
                    out_console.print(
                        f"replayed {len(outcomes)}x: {fv[0]} at step {fv[1]} every time"
                        if len(set(outcomes)) == 1
                        else f"replayed: {outcomes}"
                    )
                    out_console.print(f"replay with: [cyan]{shown.replay_command()}[/cyan]")
                counts, examples = execution_counts(shown_ex)
                campaign.results.append(
                    VariantResult(
                        variant=session.variant_name,
                        mode="replay",
                        seed=sched.seed,
                        cpus=sched.cpus,
                        operations=len(outcomes),
                        elapsed_s=0.0,
                        counts=counts,
                        examples=examples,
                        schedules=(shown.encode(),) if fv else (),
                        extra={
                            "steps": len(shown_ex.steps),
                            "first_violation_step": fv[1] if fv else None,
                        },
                    )
                )
        except (SchedulingError, ScheduleError) as e:
            fail(f"schedule does not fit {sched.variant}: {e}")
        except ExploreError as e:
            campaign.error = str(e)
        campaign.interrupted = campaign.interrupted or interrupted.signal
    finish(campaign, json_path)
