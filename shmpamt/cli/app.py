"""The ``shmpamt`` command line: a thin client of :mod:`shmpamt.api`.

Every option becomes a field of a :mod:`shmpamt.config` object, validated
there once; the run goes through :func:`shmpamt.api.run` with a progress and a
stop callback; the error tree maps to exit codes in :func:`main`, and nowhere
else. Errors go to stderr as one line.
"""

from __future__ import annotations

import random
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from shmpamt.cli.campaign import campaign_command
from shmpamt.cli.common import (
    EPILOG,
    Interrupt,
    OneLineGroup,
    build,
    check_output_path,
    fail,
    finish,
    guarded,
    out_console,
    trapped_signals,
)
from shmpamt.cli.db import DB_OPTION, db_command
from shmpamt.config import (
    CAMPAIGN_MODES,
    DEFAULT_EPOCH,
    DEFAULT_EXPLORE_BUDGET,
    DEFAULT_STRESS_SECONDS,
    ExploreConfig,
    ReplayConfig,
    StressCampaign,
    StressConfig,
)
from shmpamt.errors import UsageError
from shmpamt.machine.chaos import CHAOS_MODES
from shmpamt.machine.kernel import module_semantics
from shmpamt.records.estimate import TreeEstimate
from shmpamt.records.faildb import resolve_db
from shmpamt.records.publish import reason
from shmpamt.records.violations import VIOLATIONS
from shmpamt.report.terminal import Report
from shmpamt.schedulers.registry import DEFAULT_STRATEGY, HELP, STRATEGIES


@click.group(
    cls=OneLineGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@click.version_option(package_name="shmpamt")
def main() -> None:
    """Torture-test rig for the TDX Dynamic PAMT refcount helpers."""


# Options several commands share, spelled once.
JSON_OPTION = click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the result as JSON here (a regular file or a new path).",
)
HTML_OPTION = click.option(
    "--html",
    "html_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the failing execution's timeline as a self-contained HTML file.",
)
FORMAT_OPTION = click.option(
    "--format",
    "form",
    type=click.Choice(("table", "text")),
    default="table",
    show_default=True,
    help="How a failing interleaving is shown: table, a step-by-step timeline; text, the "
    "race as kernel changelogs draw it (one column per CPU, the get/put nesting, each "
    "SEAMCALL's status; plain ASCII within 72 columns, ready for a review mail).",
)
SEED_OPTION = click.option(
    "--seed", type=int, default=None, help="Seed of every random choice. Default: random, printed."
)
IGNORE_OPTION = click.option(
    "--ignore",
    "ignore",
    multiple=True,
    type=click.Choice(VIOLATIONS),
    help="Count and report this kind, but do not let it alone fail the verdict "
    "(e.g. add_present, which rfc/v4 treat as an expected race). Repeatable.",
)


@main.command()
def variants() -> None:
    """List the built-in variants."""
    from shmpamt import api

    for name, desc in api.builtin_variants():
        click.echo(f"{name:24} {desc}")


@main.command(epilog=EPILOG)
@click.option(
    "--variant",
    "variant_specs",
    multiple=True,
    metavar="NAME",
    help="Built-in name, path/to/file.py:Class or package.module:Class (repeatable). "
    "Default: every built-in variant.",
)
@click.option("--cpus", type=int, default=4, show_default=True, help="CPU processes (1..64).")
@click.option(
    "--ranges", type=int, default=2, show_default=True, help="2 MiB ranges (range 0 is hot)."
)
@click.option(
    "--pages-per-range",
    type=int,
    default=None,
    help="4 KiB pages used per range (>= --cpus). Default: 2 x cpus.",
)
@click.option(
    "--hot",
    type=float,
    default=0.7,
    show_default=True,
    help="Probability that a pick goes to the hot range.",
)
@click.option(
    "--hold-us", type=int, default=50, show_default=True, help="Longest hold of a page (µs)."
)
@click.option(
    "--epoch",
    type=float,
    default=DEFAULT_EPOCH,
    show_default=True,
    help="Seconds between fresh starts: every CPU pauses between rounds, quiescence is "
    "checked and the state returns to its start, so a range one race left stuck cannot "
    "hide the next (0: never; off with --faults).",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    help=f"Seconds per variant (default {DEFAULT_STRESS_SECONDS:g}: about a minute for the "
    "eight built-ins); with --mode both, half free-running, half explore.",
)
@click.option("--iterations", type=int, default=None, help="get/put rounds per CPU instead.")
@SEED_OPTION
@click.option(
    "--chaos",
    type=float,
    default=None,
    is_flag=False,
    flag_value=0.3,
    help="Chaos delays with this base probability (flag alone: 0.3; --mode both uses 0.3 "
    "unless told otherwise); see --chaos-mode.",
)
@click.option(
    "--chaos-mode",
    type=click.Choice(CHAOS_MODES),
    default=CHAOS_MODES[0],
    show_default=True,
    help="targeted: delays aimed at race windows (inside pamt_lock past the recheck, after a "
    "SEAMCALL, read-then-write) that other CPUs have seldom landed in, adapting as the run "
    "counts them; uniform: a random delay/yield at every primitive.",
)
@click.option(
    "--mode",
    type=click.Choice(CAMPAIGN_MODES),
    default=None,
    help="both: per variant, free-running stress for the first half of its seconds, then the "
    "default explore search (2 CPUs x 2 rounds, portfolio) for the second half; the verdict "
    "merges them and says which mode found each kind. stress: free-running only. explore: the "
    "explore search only. Default: both for the whole campaign (no --variant, no "
    "--iterations); stress when --variant or --iterations is given.",
)
@click.option(
    "--faults",
    "fault_spec",
    default="",
    metavar="SPEC",
    help="Fault injection, e.g. 'add.busy=0.1,aug.delay=0.2:0.001,alloc.fail=0.01'.",
)
@IGNORE_OPTION
@JSON_OPTION
@DB_OPTION
def stress(
    variant_specs: tuple[str, ...],
    json_path: Path | None,
    seed: int | None,
    chaos: float | None,
    fault_spec: str,
    mode: str | None,
    db: str | None,
    **settings: Any,
) -> None:
    """Free-running multiprocess stress over one or more variants (by default every
    built-in, each also searched by explore: see --mode)."""
    from shmpamt import api

    check_output_path("--json", json_path)
    seed = random.randrange(2**32) if seed is None else seed
    if mode is None:
        mode = "stress" if variant_specs or settings.get("iterations") else "both"
    if mode != "stress" and settings.get("iterations"):
        fail(f"--iterations needs --mode stress (--mode {mode} splits seconds)")
    specs = list(variant_specs) or api.default_variants()
    settings["faults"] = fault_spec
    campaign: StressCampaign = build(
        partial(
            StressCampaign,
            tuple(specs),
            mode=mode,
            seed=seed,
            chaos=chaos,
            stress=settings,
            db=build(partial(resolve_db, db)),
        )
    )
    configs = [s for s, _ in campaign.configs if s is not None]
    explores = [e for _, e in campaign.configs if e is not None]
    for spec in specs:
        build(partial(api.check_variant, spec))
    first = configs[0] if configs else None
    out_console.print(
        f"shmpamt stress: {len(specs)} variant(s), mode {mode}, "
        + (
            f"{first.cpus} CPUs, {first.ranges} ranges, "
            + (f"chaos {first.chaos} ({first.chaos_mode}), " if first.chaos else "")
            + (f"faults {first.faults}, " if first.faults else "")
            if first is not None
            else ""
        )
        + (f"explore {explores[0].budget:g} s per variant, " if explores else "")
        + f"seed {seed}"
        + f"; {module_semantics()}"
    )
    report = Report(rerun=_rerun(seed), merged=mode == "both")
    with trapped_signals() as interrupted, _bar() as bar:

        def run_stress(c: StressConfig) -> None:
            task = bar.add_task(
                c.variant if mode == "stress" else f"{c.variant} stress",
                total=c.seconds or (c.iterations or 0) * c.cpus,
                info="starting",
            )

            def tick(p: api.StressProgress, task: Any = task) -> None:
                rate = f"{p.operations / p.elapsed:,.0f}" if p.elapsed > 0 else "-"
                done = p.elapsed if p.total else p.operations
                info = f"{rate} ops/s, {p.violations} violations"
                if p.coverage is not None:
                    info += f", windows {p.coverage.hit}/{p.coverage.seen}"
                bar.update(task, completed=done, info=info)

            res = api.run(c, on_progress=tick, should_stop=lambda: bool(interrupted))
            bar.update(task, completed=c.seconds or res.raw.operations)
            report.results.append(res.raw)

        def run_explore(c: ExploreConfig) -> None:
            task = bar.add_task(f"{c.variant} explore", total=c.seconds, info="starting")

            def tick(p: api.ExploreProgress, task: Any = task) -> None:
                info = f"{p.executions} executions, {p.kinds} kinds"
                bar.update(task, completed=min(p.elapsed, c.seconds), info=info)

            res = api.run(c, on_progress=tick, should_stop=lambda: bool(interrupted))
            bar.update(task, completed=c.seconds)
            report.results.append(res.raw)

        def run_all() -> None:
            for stress_run, explore_run in campaign.configs:
                if interrupted:
                    break
                if stress_run is not None:
                    run_stress(stress_run)
                if explore_run is not None and not interrupted:
                    run_explore(explore_run)

        guarded(report, run_all)
        report.interrupted = interrupted.signal
    finish(report, json_path)


def _tree(e: TreeEstimate) -> str:
    """The progress line's estimate: share of the tree, and the time left at this rate."""
    return f"~{e.share:.0%} of tree, ~{e.executions:,} total, ~{e.seconds_left:,.0f} s left"


def _rerun(seed: int) -> str:
    """This command line with its seed pinned, so the campaign can be run again."""
    args = sys.argv[1:]
    if "--seed" not in args and not any(a.startswith("--seed=") for a in args):
        args = [*args, "--seed", str(seed)]
    return shlex.join(["shmpamt", *args])


@contextmanager
def _bar() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description:24.24}"),
        BarColumn(bar_width=20),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=out_console,
        transient=False,
    ) as bar:
        yield bar


@main.command("clean", epilog=EPILOG)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--force",
    is_flag=True,
    help="Also remove objects whose creator cannot be judged (another PID namespace).",
)
def clean_cmd(dry_run: bool, force: bool) -> None:
    """Remove IPC objects left by shmpamt runs whose process is gone."""
    from shmpamt import api

    gone, kept = api.clean(dry_run=dry_run, force=force)
    verb = "would remove" if dry_run else "removed"
    for lo in gone:
        click.echo(f"{verb} {lo.kind} {lo.name} (creator pid {lo.pid} is gone)")
    for lo in kept:
        click.echo(f"kept {lo.kind} {lo.name} ({lo.reason})")
    click.echo(f"{len(gone)} {verb}, {len(kept)} kept")


def run_one(
    report: Report,
    config: ExploreConfig | ReplayConfig,
    interrupted: Interrupt,
    tick: Callable[[Any], None] | None = None,
) -> Any:
    """Run one explore or replay config into ``report``; its Result, or None if it failed."""
    from shmpamt import api

    got: list[Any] = []

    def stop() -> bool:
        return bool(interrupted)

    def go() -> None:
        if isinstance(config, ReplayConfig):
            res = api.run(config, should_stop=stop)
        else:
            res = api.run(config, on_progress=tick, should_stop=stop)
        report.results.append(res.raw)
        got.append(res)

    guarded(report, go)
    report.interrupted = interrupted.signal
    return got[0] if got else None


def show_timeline(res: Any, html: Path | None, form: str = "table") -> str:
    """The shown execution of a result, as a terminal timeline or (``form`` "text") a
    race report per finding, and HTML on request; the one line saying why the HTML
    file could not be written, else ""."""
    from shmpamt.report.timeline import render, write_html

    r = res.raw
    ex = r.shown
    if ex is None:
        return ""
    title = f"{r.variant}: {r.findings[0].schedule}" if r.findings else r.variant
    viol = list(zip(ex.violation_steps, ex.violations, strict=True))
    if form == "text":
        show_races(res)
    else:
        out_console.print(render(ex.trace, viol, cpus=r.cpus, title=title))
    if html is not None:
        replay = r.findings[0].replay_command if r.findings else ""
        shown = f"{r.explore.claim}: {r.coverage}" if r.explore is not None else r.coverage
        try:
            write_html(html, ex.trace, viol, cpus=r.cpus, title=title, replay=replay, shown=shown)
        except OSError as e:
            return f"cannot write {html}: {reason(e)}"
        out_console.print(f"timeline written to {html}", markup=False)
    return ""


def show_races(res: Any) -> None:
    """Each finding's interleaving as a race report (``--format text``), plain text; a
    replay that found nothing draws its execution."""
    kinds = [f.kind for f in res.raw.findings] or [""]
    for kind in dict.fromkeys(kinds):
        text = res.race_report(kind)
        if text:
            click.echo(text)


_STRATEGY_HELP = "; ".join(f"{n}: {h}" for n, h in HELP.items())


@main.command(epilog=EPILOG)
@click.option(
    "--variant",
    "variant_spec",
    required=True,
    metavar="NAME",
    help="Built-in name, path/to/file.py:Class or package.module:Class.",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=DEFAULT_STRATEGY,
    show_default=True,
    help=_STRATEGY_HELP,
)
@click.option("--depth", type=int, default=2, show_default=True, help="PCT bug depth d.")
@click.option(
    "--preemptions",
    type=int,
    default=None,
    help="Preemption bound of dfs and dpor (default: dfs 2, dpor unbounded).",
)
@click.option("--cpus", type=int, default=2, show_default=True, help="CPU processes (1..8).")
@click.option(
    "--rounds", type=int, default=2, show_default=True, help="get/use/put rounds per CPU."
)
@click.option("--ranges", type=int, default=1, show_default=True, help="2 MiB ranges.")
@click.option(
    "--budget",
    type=float,
    default=None,
    help=f"Seconds to search (default {DEFAULT_EXPLORE_BUDGET:g} unless --executions is given).",
)
@click.option("--executions", type=int, default=None, help="Stop after this many executions.")
@click.option(
    "--faults",
    default="default",
    show_default=True,
    metavar="SPEC",
    help="Faults the search injects as choices, in stress's grammar without delays "
    "(add.busy=0.2,remove.busy=0.2,aug.busy=P,reclaim.busy=P,*.busy=P,alloc.fail=P): dfs "
    "and dpor explore every one, samplers draw them with P; 'none': the happy path only.",
)
@click.option(
    "--max-faults",
    type=int,
    default=1,
    show_default=True,
    help="Most injected faults per execution (0..8).",
)
@SEED_OPTION
@click.option("--no-minimize", is_flag=True, help="Do not shrink the failing schedules.")
@click.option("--first", is_flag=True, help="Stop at the first failing execution.")
@click.option(
    "--no-symmetry",
    "no_symmetry",
    is_flag=True,
    help="dpor: try every CPU first, also where CPUs with the same workload are "
    "interchangeable (the reduction assumes the variant ignores the CPU number).",
)
@click.option(
    "--halt-at-violation",
    is_flag=True,
    help="dpor: end each execution's search at its first violation: a proof of every "
    "kind an interleaving can log first, in far fewer executions where what follows a "
    "violation is a big tree; kinds logged after one are reported as seen on one "
    "schedule each, not searched.",
)
@click.option(
    "--jobs",
    type=int,
    default=None,
    help="Explorers searching at once, one per core (default: every usable core).",
)
@click.option(
    "--no-pin", is_flag=True, help="Let the OS place the processes instead of one core per job."
)
@IGNORE_OPTION
@JSON_OPTION
@HTML_OPTION
@FORMAT_OPTION
@DB_OPTION
def explore(
    variant_spec: str,
    seed: int | None,
    no_minimize: bool,
    no_pin: bool,
    no_symmetry: bool,
    ignore: tuple[str, ...],
    json_path: Path | None,
    html_path: Path | None,
    form: str,
    db: str | None,
    **settings: Any,
) -> None:
    """Controlled scheduling: the rig chooses every interleaving."""
    from shmpamt import api

    check_output_path("--json", json_path)
    check_output_path("--html", html_path)
    seed = random.randrange(2**32) if seed is None else seed
    config: ExploreConfig = build(
        lambda: ExploreConfig(
            variant_spec,
            seed=seed,
            minimize=not no_minimize,
            ignore=frozenset(ignore),
            pin=not no_pin,
            symmetry=not no_symmetry,
            db=resolve_db(db),
            **settings,
        )
    )
    build(lambda: api.check_variant(config.variant))
    out_console.print(
        f"shmpamt explore: {config.variant}, strategy {config.strategy}"
        + (f" d={config.depth}" if config.strategy == "pct" else "")
        + (f" preemptions<={config.preemptions}" if config.strategy == "dfs" else "")
        + f", {config.cpus} CPUs x {config.rounds} rounds, {config.ranges} range(s), seed {seed}"
        + f", {config.jobs} job(s)"
        + f", faults {config.faults} (<= {config.max_faults})"
        + f"; {module_semantics()}"
    )
    report = Report(rerun=_rerun(seed))
    with trapped_signals() as interrupted, _bar() as bar:
        task = bar.add_task(config.variant, total=config.seconds or config.executions, info="")

        def tick(p: api.ExploreProgress) -> None:
            rate = f"{p.executions / p.elapsed:,.0f}" if p.elapsed > 0 else "-"
            bar.update(
                task,
                completed=p.elapsed if config.seconds else p.executions,
                info=f"{p.executions} executions ({rate}/s), {p.kinds} kinds"
                + (f", {_tree(p.estimate)}" if p.estimate is not None else ""),
            )

        shown = run_one(report, config, interrupted, tick)
    unwritten = show_timeline(shown, html_path, form) if shown is not None else ""
    finish(report, json_path, unwritten)


@main.command(epilog=EPILOG)
@click.argument("schedule")
@click.option(
    "--minimize", "do_minimize", is_flag=True, help="Shrink the schedule while it still fails."
)
@click.option(
    "--times", type=int, default=1, show_default=True, help="Replay this many times; all agree."
)
@HTML_OPTION
@JSON_OPTION
@FORMAT_OPTION
def replay(
    schedule: str,
    do_minimize: bool,
    times: int,
    html_path: Path | None,
    json_path: Path | None,
    form: str,
) -> None:
    """Re-run a schedule string deterministically (exit 1 if it fails)."""
    from shmpamt import api

    check_output_path("--json", json_path)
    check_output_path("--html", html_path)
    config: ReplayConfig = build(lambda: ReplayConfig(schedule, times=times, minimize=do_minimize))
    try:
        api.check_variant(config.scenario.variant)
    except UsageError as e:
        fail(f"the schedule's variant cannot be loaded: {e}")
    report = Report()
    with trapped_signals() as interrupted:
        shown = run_one(report, config, interrupted)
    unwritten = ""
    if shown is not None:
        unwritten = show_timeline(shown, html_path, form)
        r = shown.raw
        fv = r.shown.first_violation() if r.shown is not None else None
        if fv is None:
            out_console.print(f"replayed {r.operations}x: no violation ({module_semantics()})")
        else:
            out_console.print(
                f"replayed {r.operations}x: {fv[0]} at step {fv[1]} ({module_semantics()})"
            )
    finish(report, json_path, unwritten)


# the campaign and db commands live in their own modules
main.add_command(campaign_command)
main.add_command(db_command)
