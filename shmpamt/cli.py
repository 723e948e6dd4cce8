"""The ``shmpamt`` command line: a thin client of :mod:`shmpamt.api`.

Every option becomes a field of a :mod:`shmpamt.config` object, validated
there once; the run goes through :func:`shmpamt.api.run` with a progress and a
stop callback; the error tree maps to exit codes in :func:`main`, and nowhere
else. Errors go to stderr as one line.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Final, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from shmpamt.chaos import CHAOS_MODES
from shmpamt.cli_campaign import campaign_command  # campaign work (issue 15)
from shmpamt.cli_db import DB_OPTION, db_command  # campaign work (issue 15)
from shmpamt.config import (
    DEFAULT_EPOCH,
    DEFAULT_EXPLORE_BUDGET,
    DEFAULT_STRESS_SECONDS,
    ExploreConfig,
    ReplayConfig,
    StressConfig,
)
from shmpamt.errors import ShmpamtError, UsageError
from shmpamt.faildb import resolve_db  # campaign work (issue 15)
from shmpamt.report import EXIT_ERROR, EXIT_MEANING, Campaign, check_report_path
from shmpamt.schedulers.registry import DEFAULT_STRATEGY, HELP, STRATEGIES
from shmpamt.violations import VIOLATIONS

err_console = Console(stderr=True, soft_wrap=True, emoji=False)  # one line, as written
# A log file or pipe gets 120 columns instead of rich's 80, so reports stay tables.
out_console = Console(width=None if sys.stdout.isatty() else 120, emoji=False)

#: what ``shmpamt stress --mode`` runs per variant
MODES = ("both", "stress", "explore")
#: share of each variant's seconds that free-running stress gets in --mode both
STRESS_SHARE = 0.5

#: chaos of the default campaign (--mode both) when --chaos is not given
DEFAULT_CAMPAIGN_CHAOS: Final = 0.3

EPILOG = (
    "Exit status: "
    + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_MEANING.items())
    + '. Shell completion: eval "$(_SHMPAMT_COMPLETE=bash_source shmpamt)" '
    "(zsh_source, fish_source for the other shells)."
)


def fail(msg: str) -> NoReturn:
    err_console.print(f"error: {msg}", highlight=False, markup=False)
    sys.exit(EXIT_ERROR)


def flag_message(e: UsageError) -> str:
    """The library's words with the CLI's spelling of the setting: cpus -> --cpus."""
    msg = str(e)
    if not e.field:
        return msg
    flag = "--" + e.field.replace("_", "-")
    if msg.startswith(e.field):
        return flag + msg[len(e.field) :]
    return f"{flag}: {msg}"


class Interrupt:
    """SIGINT/SIGTERM become a flag the engine polls, so cleanup always runs."""

    def __init__(self) -> None:
        self.signal = ""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name

    def __bool__(self) -> bool:
        return bool(self.signal)


#: set from the moment the command line is parsed, so a signal that arrives before a run
#: starts still ends in a partial report (and JSON), not a KeyboardInterrupt traceback
INTERRUPT = Interrupt()


def trap_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, INTERRUPT)


@contextmanager
def trapped_signals() -> Iterator[Interrupt]:
    trap_signals()
    yield INTERRUPT


def check_output_path(option: str, path: Path | None) -> None:
    if path is None:
        return
    if not str(path) or str(path) == ".":
        fail(f"{option}: the file name is empty")
    if len(path.name.encode()) > 255:
        fail(f"{option}: the file name is longer than 255 bytes")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        if not parent.is_dir():
            fail(f"{option} {path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            fail(f"{option} {path}: folder {parent} is not writable")
        if path.is_dir():
            fail(f"{option} {path} is a folder")
        check_report_path(path)
    except OSError as e:
        fail(f"{option}: {e}")


def finish(campaign: Campaign, json_path: Path | None) -> NoReturn:
    error, campaign.error = campaign.error, ""
    campaign.render(out_console)
    campaign.error = error
    if error:
        err_console.print(f"error: {error}", highlight=False, markup=False)
    if json_path is not None:
        try:
            campaign.write_json(json_path)
        except OSError as e:
            fail(f"cannot write {json_path}: {e}")
        out_console.print(f"JSON report written to {json_path}")
    sys.exit(campaign.exit_code())


def guarded(campaign: Campaign, fn: Callable[[], None]) -> None:
    """The one place the error tree meets exit codes: usage errors end the command
    (exit 2, one line); run failures become the report's error line (exit 2)."""
    try:
        fn()
    except UsageError as e:
        fail(flag_message(e))
    except ShmpamtError as e:
        campaign.error = f"{type(e).__name__}: {e}"
    except OSError as e:
        campaign.error = f"{type(e).__name__}: {e}"
    except Exception as e:
        # A bug in the rig itself: one line by default, the traceback on request.
        if os.environ.get("SHMPAMT_DEBUG"):
            raise
        campaign.error = f"internal error: {type(e).__name__}: {e} (SHMPAMT_DEBUG=1 shows where)"


def build(make: Callable[[], Any]) -> Any:
    """A config, or one line and exit 2."""
    try:
        return make()
    except UsageError as e:
        fail(flag_message(e))
    except TypeError as e:
        fail(str(e))


class OneLineGroup(click.Group):
    """click's usage errors are four lines; ours are one, on stderr, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            trap_signals()
            return super().main(*args, **kwargs)
        except KeyboardInterrupt:  # a Ctrl-C before our handler was installed
            err_console.print("error: interrupted before the run started", markup=False)
            sys.exit(130)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(0)
        except click.UsageError as e:
            hint = f" (try '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            fail(e.format_message().replace("\n", " ") + hint)
        except click.ClickException as e:
            fail(e.format_message())
        except click.exceptions.Abort:
            sys.exit(130)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)


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
    type=click.Choice(MODES),
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
def stress(
    variant_specs: tuple[str, ...],
    json_path: Path | None,
    seed: int | None,
    chaos: float | None,
    fault_spec: str,
    mode: str | None,
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
    if chaos is None and mode == "both":
        chaos = DEFAULT_CAMPAIGN_CHAOS  # the main job widens race windows (targeted chaos)

    def config(spec: str) -> StressConfig:
        return StressConfig(spec, seed=seed, chaos=chaos or 0.0, faults=fault_spec, **settings)

    # Validated as given, then split: an error names the seconds the user wrote.
    configs: list[StressConfig] = [build(partial(config, spec)) for spec in specs]
    total = configs[0].seconds
    if mode == "both":
        configs = [dataclasses.replace(c, duration=total * STRESS_SHARE) for c in configs]
    explores: list[ExploreConfig] = []
    if mode != "stress":
        budget = total * (1 - STRESS_SHARE if mode == "both" else 1)
        explores = [
            build(
                partial(
                    ExploreConfig,
                    c.variant,
                    budget=budget,
                    seed=seed,
                    minimize=False,  # the campaign's time goes to searching; replay shrinks
                    ignore=c.ignore,
                )
            )
            for c in configs
        ]
    for spec in specs:
        build(partial(api.check_variant, spec))
    first = configs[0]
    out_console.print(
        f"shmpamt stress: {len(specs)} variant(s), mode {mode}, "
        + (
            f"{first.cpus} CPUs, {first.ranges} ranges, "
            + (f"chaos {first.chaos} ({first.chaos_mode}), " if first.chaos else "")
            + (f"faults {first.faults}, " if first.faults else "")
            if mode != "explore"
            else ""
        )
        + (f"explore {explores[0].budget:g} s per variant, " if explores else "")
        + f"seed {seed}"
    )
    campaign = Campaign(rerun=_rerun(seed), merged=mode == "both")
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
            campaign.results.append(res.raw)

        def run_explore(c: ExploreConfig) -> None:
            task = bar.add_task(f"{c.variant} explore", total=c.seconds, info="starting")

            def tick(p: api.ExploreProgress, task: Any = task) -> None:
                info = f"{p.executions} executions, {p.kinds} kinds"
                bar.update(task, completed=min(p.elapsed, c.seconds), info=info)

            res = api.run(c, on_progress=tick, should_stop=lambda: bool(interrupted))
            bar.update(task, completed=c.seconds)
            campaign.results.append(res.raw)

        def run_all() -> None:
            for i, c in enumerate(configs):
                if interrupted:
                    break
                if mode != "explore":
                    run_stress(c)
                if explores and not interrupted:
                    run_explore(explores[i])

        guarded(campaign, run_all)
        campaign.interrupted = interrupted.signal
    finish(campaign, json_path)


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
    campaign: Campaign,
    config: ExploreConfig | ReplayConfig,
    interrupted: Interrupt,
    tick: Callable[[Any], None] | None = None,
) -> Any:
    """Run one explore or replay config into ``campaign``; its Result, or None if it failed."""
    from shmpamt import api

    got: list[Any] = []

    def stop() -> bool:
        return bool(interrupted)

    def go() -> None:
        if isinstance(config, ReplayConfig):
            res = api.run(config, should_stop=stop)
        else:
            res = api.run(config, on_progress=tick, should_stop=stop)
        campaign.results.append(res.raw)
        got.append(res)

    guarded(campaign, go)
    campaign.interrupted = interrupted.signal
    return got[0] if got else None


def show_timeline(res: Any, html: Path | None) -> None:
    """The shown execution of a result, as a terminal timeline (and HTML on request)."""
    from shmpamt.timeline import render, write_html

    r = res.raw
    ex = r.shown
    if ex is None:
        return
    title = f"{r.variant}: {r.findings[0].schedule}" if r.findings else r.variant
    viol = list(zip(ex.violation_steps, ex.violations, strict=True))
    out_console.print(render(ex.trace, viol, cpus=r.cpus, title=title))
    if html is not None:
        replay = r.findings[0].replay_command if r.findings else ""
        shown = f"{r.explore.claim}: {r.coverage}" if r.explore is not None else r.coverage
        write_html(html, ex.trace, viol, cpus=r.cpus, title=title, replay=replay, shown=shown)
        out_console.print(f"timeline written to {html}")


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
@SEED_OPTION
@click.option("--no-minimize", is_flag=True, help="Do not shrink the failing schedules.")
@click.option("--first", is_flag=True, help="Stop at the first failing execution.")
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
@DB_OPTION  # campaign work (issue 15): the failure database
def explore(
    variant_spec: str,
    seed: int | None,
    no_minimize: bool,
    no_pin: bool,
    ignore: tuple[str, ...],
    json_path: Path | None,
    html_path: Path | None,
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
            db=resolve_db(db),  # campaign work (issue 15)
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
    )
    campaign = Campaign(rerun=_rerun(seed))
    with trapped_signals() as interrupted, _bar() as bar:
        task = bar.add_task(config.variant, total=config.seconds or config.executions, info="")

        def tick(p: api.ExploreProgress) -> None:
            rate = f"{p.executions / p.elapsed:,.0f}" if p.elapsed > 0 else "-"
            bar.update(
                task,
                completed=p.elapsed if config.seconds else p.executions,
                info=f"{p.executions} executions ({rate}/s), {p.kinds} kinds",
            )

        shown = run_one(campaign, config, interrupted, tick)
    if shown is not None:
        show_timeline(shown, html_path)
    finish(campaign, json_path)


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
def replay(
    schedule: str, do_minimize: bool, times: int, html_path: Path | None, json_path: Path | None
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
    campaign = Campaign()
    with trapped_signals() as interrupted:
        shown = run_one(campaign, config, interrupted)
    if shown is not None:
        show_timeline(shown, html_path)
        r = shown.raw
        fv = r.shown.first_violation() if r.shown is not None else None
        if fv is None:
            out_console.print(f"replayed {r.operations}x: no violation")
        else:
            out_console.print(f"replayed {r.operations}x: {fv[0]} at step {fv[1]}")
    finish(campaign, json_path)


# --- campaign work (issue 15): the campaign and db commands live in their own modules ---
main.add_command(campaign_command)
main.add_command(db_command)
