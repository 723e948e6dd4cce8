"""``shmpamt campaign``: a matrix of shards on a Dask cluster, one merged verdict.

Registered by :mod:`shmpamt.cli.app`; imports only light modules at load time
(the shared helpers in :mod:`shmpamt.cli.common` among them) so that ``shmpamt
--help`` stays fast: Dask (``shmpamt.campaign.cluster``) and the rig
(``shmpamt.api``) are imported when the command runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from shmpamt.campaign.address import check_resolves, check_scheduler, check_tls
from shmpamt.campaign.matrix import (
    SHARD_KINDS,
    Plan,
    ShardOutcome,
    VariantSummary,
    add_outcome,
    add_regressions,
    ordered_kinds,
)
from shmpamt.cli import common
from shmpamt.cli.db import DB_OPTION
from shmpamt.errors import DatabaseError, UsageError
from shmpamt.machine.kernel import module_semantics
from shmpamt.records.faildb import DB_NOTE, Entry, FailureDB, resolve_db
from shmpamt.records.publish import reason, write_file
from shmpamt.records.variant_files import remember as remember_file
from shmpamt.records.violations import VIOLATIONS
from shmpamt.report.terminal import (
    EXIT_CLEAN,
    EXIT_ERROR,
    EXIT_MEANING,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_VIOLATIONS,
    compact,
    print_command,
)
from shmpamt.schedulers.registry import DEFAULT_STRATEGY

#: the strategy a campaign runs as one distributed proof per variant (shmpamt.cli.proofs)
PROOF: Final = "dpor"
#: executions per subtree task (shmpamt.campaign.proof.DEFAULT_SLICE, without loading Dask)
DEFAULT_SLICE: Final = 400
#: split states per path of a proof's tree (shmpamt.campaign.proof.DEFAULT_DEPTH)
DEFAULT_SPLIT_DEPTH: Final = 12

if TYPE_CHECKING:
    from shmpamt.campaign.cluster import CampaignRun, RegressionOutcome


class Board:
    """The campaign as it stands: per-variant summaries, updated as outcomes arrive."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.total = plan.size
        self.per_variant = len(plan.strategies) * plan.seeds
        self.summaries = {v: VariantSummary(v) for v in plan.variants}
        self.done = 0
        self.interrupted = ""
        self.error = ""
        self.missing: list[str] = []
        self.workers = 0
        self.scheduler = ""
        self.stored_new = 0
        #: what the reader should know that is not about a variant (the database's state)
        self.notes: list[str] = []
        self.outcomes: list[ShardOutcome] = []
        #: the dpor proofs' results and exit status, when the plan had proofs too
        self.proofs: list[dict[str, Any]] = []
        self.proofs_exit = EXIT_CLEAN

    def add(self, ev: ShardOutcome | RegressionOutcome) -> None:
        if isinstance(ev, ShardOutcome):
            self.outcomes.append(ev)
            if ev.stopped and ev.result is None:
                self.missing.append(ev.shard.id)  # stopped before it started: it ran nothing
            else:
                self.done += 1
            add_outcome(self.summaries[ev.shard.variant], ev)
        else:
            v = self.summaries[ev.variant]
            if ev.error:
                v.errors.append(f"regression check: {ev.error}")
            add_regressions(v, len(ev.regressions), ev.still)

    def exit_code(self) -> int:
        if self.proofs_exit in (EXIT_SIGINT, EXIT_SIGTERM, EXIT_VIOLATIONS):
            return self.proofs_exit
        if self.interrupted == "SIGINT":
            return EXIT_SIGINT
        if self.interrupted == "SIGTERM":
            return EXIT_SIGTERM
        if any(v.failing for v in self.summaries.values()):
            return EXIT_VIOLATIONS
        if self.error or any(v.errors or v.incidents for v in self.summaries.values()):
            return EXIT_ERROR
        return self.proofs_exit

    # -- renderings --------------------------------------------------------------------

    def live_table(self) -> Table:
        t = Table(title=f"campaign: {self.done}/{self.total} shards", title_justify="left")
        for col in ("variant", "shards", "kinds so far", "ops", "retried"):
            t.add_column(col)
        for v in self.summaries.values():
            kinds = ", ".join(f"{k.kind} {compact(k.count)}" for k in ordered_kinds(v))
            t.add_row(
                v.variant,
                f"{v.shards}/{self.per_variant}",
                kinds or "-",
                compact(v.operations),
                str(len(v.retried)) if v.retried else "-",
            )
        return t

    def render(self, console: Console) -> None:
        title = (
            "verdict: violations found"
            if any(v.failing for v in self.summaries.values())
            else "verdict: no violation found"
        )
        t = Table(title=title, title_justify="left")
        t.add_column("variant", style="bold", no_wrap=True)
        t.add_column("result", no_wrap=True)
        t.add_column("kinds seen (count)", ratio=1)
        t.add_column("shards", justify="right")
        t.add_column("ops", justify="right")
        for v in self.summaries.values():
            kinds = ", ".join(
                f"{k.kind} {compact(k.count)}" + (" (ignored)" if k.ignored else "")
                for k in ordered_kinds(v)
            )
            result = (
                f"[red]{len(v.failing)} kind(s)[/red]"
                if v.failing
                else "[yellow]errors[/yellow]"
                if v.errors or v.incidents
                else "[yellow]incomplete[/yellow]"  # not every shard ran: never "clean"
                if v.shards < self.per_variant
                else "[green]clean[/green]"
            )
            t.add_row(
                v.variant,
                result,
                kinds or "-",
                f"{v.shards}/{self.per_variant}",
                compact(v.operations),
            )
        console.print(t)
        for v in self.summaries.values():
            # The regression check ran before any shard: it is reported before their findings.
            if v.regressions is not None:
                console.print(
                    f"  [bold]{v.variant}[/bold] regressions: {v.regressions[0]} stored "
                    f"schedules replayed, {v.regressions[1]} still fail"
                )
            for k in ordered_kinds(v):
                if k.best is not None:
                    where = f" on {k.best.where}" if k.best.where else ""
                    print_command(
                        console,
                        f"  [bold]{v.variant}[/bold] {k.kind}: {k.best.steps} steps, "
                        f"{k.best.shard}{where}: ",
                        f"shmpamt replay {k.best.schedule}",
                    )
                elif k.what:
                    console.print(f"  [bold]{v.variant}[/bold] {k.kind}: {k.what}")
            for line in v.retried:
                console.print(f"  [bold]{v.variant}[/bold] [yellow]retried[/yellow]: {line}")
            for line in v.errors:
                console.print(f"  [bold]{v.variant}[/bold] [red]error[/red]: {line}")
            for line in v.incidents:
                console.print(f"  [bold]{v.variant}[/bold] [yellow]incident[/yellow]: {line}")
        for note in self.notes:  # may quote untrusted files: never markup
            console.print(f"  note: {escape(note)}")
        console.print(
            f"{self.done} of {self.total} shards reported, on {self.workers} worker(s) "
            f"({self.scheduler})"
        )
        if self.missing:
            console.print(f"[yellow]{len(self.missing)} shard(s) did not run[/yellow]")
        if self.interrupted:
            console.print(f"[yellow]interrupted by {self.interrupted}: partial report[/yellow]")
        code = self.exit_code()
        console.print(f"exit status {code}: {EXIT_MEANING.get(code, '')}")

    def to_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "tool": "shmpamt",
            "schema": 2,
            "kind": "campaign",
            "module": module_semantics(),
            "complete": not self.interrupted and not self.error and not self.missing,
            "interrupted": self.interrupted or None,
            "error": self.error or None,
            "exit_status": self.exit_code(),
            "plan": {
                "variants": list(p.variants),
                "strategies": list(p.strategies),
                "seed": p.seed,
                "seeds": p.seeds,
                "budget": p.budget,
                "executions": p.executions,
                "cpus": p.cpus,
                "rounds": p.rounds,
                "ignore": sorted(p.ignore),
            },
            "scheduler": self.scheduler,
            "workers": self.workers,
            "shards_total": self.total,
            "shards_reported": self.done,
            "missing": self.missing,
            "stored_new": self.stored_new,
            "notes": self.notes,
            "variants": [v.to_dict() for v in self.summaries.values()],
            **({"proofs": self.proofs} if self.proofs else {}),
        }


@click.command("campaign")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    metavar="NAME",
    help="Variant (repeatable). Default: every built-in variant.",
)
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    type=click.Choice(SHARD_KINDS),
    help=f"Explore strategy, or 'stress' for free-running shards (repeatable). "
    f"Default: {DEFAULT_STRATEGY}.",
)
@click.option("--seed", type=int, default=None, help="First seed. Default: 0.")
@click.option("--seeds", type=int, default=None, help="Seeds per variant and strategy (4).")
@click.option("--budget", type=float, default=None, help="Seconds per shard (default 5).")
@click.option("--executions", type=int, default=None, help="Executions per shard instead.")
@click.option("--cpus", type=int, default=None, help="CPUs per shard's system (2).")
@click.option("--rounds", type=int, default=None, help="Rounds per CPU in explore shards (2).")
@click.option("--ignore", multiple=True, type=click.Choice(VIOLATIONS), help="As for explore.")
@click.option(
    "--faults",
    default=None,
    metavar="SPEC",
    help="Faults of the explore shards, as for explore (default: the portfolio's).",
)
@click.option(
    "--max-faults", type=int, default=None, help="Most injected faults per execution (1)."
)
@click.option(
    "--matrix",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A TOML file with the matrix (variants, strategies, seed, seeds, budget, "
    "executions, cpus, rounds, ignore); options given here win.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:8786",
    help="Use this Dask scheduler. Default: a local cluster, one worker process per core.",
)
@click.option("--workers", type=int, default=None, help="Local workers (default: the cores).")
@click.option(
    "--retries", type=int, default=2, show_default=True, help="Retries of a failing shard."
)
@click.option(
    "--resume",
    is_flag=True,
    help="dpor: continue each proof from its checkpoint in the database's proofs/ folder.",
)
@click.option(
    "--slice",
    "slice_",
    type=int,
    default=None,
    help="dpor: executions a subtree task runs before it hands back what it has not "
    "finished (400).",
)
@click.option(
    "--split-depth",
    "split_depth",
    type=int,
    default=None,
    help="dpor: split states per path of the proof's fixed tree of subtrees, 0..24 "
    f"({DEFAULT_SPLIT_DEPTH}); deeper cuts the tree into more, smaller subtrees.",
)
@click.option(
    "--no-symmetry",
    "no_symmetry",
    is_flag=True,
    help="dpor: explore without symmetry over interchangeable CPUs (as for explore).",
)
@click.option(
    "--halt-at-violation",
    "halt_at_violation",
    is_flag=True,
    help="dpor: end each execution's search at its first violation (as for explore).",
)
@DB_OPTION
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def campaign_command(
    variants: tuple[str, ...],
    strategies: tuple[str, ...],
    matrix: Path | None,
    scheduler: str | None,
    workers: int | None,
    retries: int,
    resume: bool,
    slice_: int | None,
    split_depth: int | None,
    no_symmetry: bool,
    halt_at_violation: bool,
    db: str | None,
    json_path: Path | None,
    ignore: tuple[str, ...],
    **settings: Any,
) -> None:
    """Run variants x strategies x seeds as shards on a Dask cluster; merge one verdict.

    The dpor strategy is one distributed proof per variant: its tree cut into subtree
    tasks, checkpointed so that --resume continues it."""
    from shmpamt import api

    common.check_output_path("--json", json_path)
    if scheduler is not None:  # before anything else: a typo costs one line, at once
        scheduler = common.build(partial(check_scheduler, scheduler))
        import dask.config

        common.build(partial(check_tls, scheduler, lambda key: dask.config.get(key, None)))
        common.build(partial(check_resolves, scheduler))
    if workers is not None and workers < 1:
        common.fail(f"--workers must be at least 1, not {workers}")
    if retries < 0:
        common.fail(f"--retries must be at least 0, not {retries}")
    given: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}
    if variants:
        given["variants"] = variants
    if strategies:
        given["strategies"] = strategies
    if ignore:
        given["ignore"] = ignore  # a tuple of names, as the matrix file gives them

    def make() -> Plan:
        if matrix is not None:
            return Plan.from_toml(matrix, **given)
        given.setdefault("variants", tuple(n for n, _ in api.builtin_variants()))
        return Plan.from_mapping(given)

    plan: Plan = common.build(make)
    # The proof's subtree tasks search without faults: a fault spec must not vanish.
    proof_without_faults = (
        PROOF in plan.strategies and plan.faults not in ("default", "none") and plan.max_faults > 0
    )
    if proof_without_faults and plan.strategies == (PROOF,):
        common.fail(
            "--faults does not reach the distributed dpor proof, which searches without "
            "injected faults: drop it, or prove with faults on one machine "
            "(shmpamt explore --strategy dpor --faults SPEC)"
        )
    for spec in plan.variants:
        common.build(partial(api.check_variant, spec))
        remember_file(spec)  # the shards' schedule strings name variant files short
    db_path: str | None = common.build(lambda: resolve_db(db))
    fdb = FailureDB(db_path) if db_path else None
    notes: list[str] = []
    if proof_without_faults:
        notes.append("the dpor proof searches without injected faults; --faults applies to the "
                     "other strategies' explore shards")  # fmt: skip
    stored = _stored(fdb, plan, api.stored_entries, notes)
    if stored is None:
        fdb = None  # unreadable: not written either
    proofs_exit, proofs = EXIT_CLEAN, []
    if PROOF in plan.strategies:
        from shmpamt.cli.proofs import prove_all

        proof_board = prove_all(
            plan,
            scheduler=scheduler,
            workers=workers,
            db=db_path,
            resume=resume,
            slice_=DEFAULT_SLICE if slice_ is None else slice_,
            depth=DEFAULT_SPLIT_DEPTH if split_depth is None else split_depth,
            symmetry=not no_symmetry,
            halt_at_violation=halt_at_violation,
        )
        proofs_exit, proofs = proof_board.exit_code(), proof_board.to_dict()
        rest = tuple(s for s in plan.strategies if s != PROOF)
        if not rest or proof_board.interrupted:
            _finish_proofs(proofs, proofs_exit, json_path)
        plan = dataclasses.replace(plan, strategies=rest)
    elif (
        resume or slice_ is not None or split_depth is not None or no_symmetry or halt_at_violation
    ):
        common.fail(
            "--resume, --slice, --split-depth, --no-symmetry and --halt-at-violation are for "
            "proofs: add --strategy dpor"
        )
    board = Board(plan)
    board.proofs, board.proofs_exit = proofs, proofs_exit
    board.notes = notes
    common.out_console.print(
        f"shmpamt campaign: {len(plan.variants)} variant(s) x {len(plan.strategies)} "
        f"strateg{'y' if len(plan.strategies) == 1 else 'ies'} x {plan.seeds} seed(s) = "
        f"{board.total} shards, "
        + (f"budget {plan.budget:g} s" if plan.budget else f"{plan.executions} executions")
        + " each, on "
        + (scheduler or f"a local cluster of {workers or os.cpu_count()} worker(s)")
        + f"; {module_semantics()}"
    )
    _go(plan, board, stored or {}, scheduler, workers, retries)
    if fdb is not None:
        try:
            board.stored_new = _remember(fdb, board.outcomes)
        except DatabaseError as e:
            board.notes.append(f"{DB_NOTE}: {e}: this campaign's failures are not stored")
        if board.stored_new:
            common.out_console.print(f"{board.stored_new} new failure(s) stored in {fdb.root}")
    _finish(board, json_path, common.out_console, common.fail)


def _finish_proofs(proofs: list[dict[str, Any]], code: int, json_path: Path | None) -> NoReturn:
    """The end of a campaign of proofs only: the JSON, the exit status."""
    if json_path is not None:
        data = {
            "tool": "shmpamt",
            "schema": 2,
            "kind": "proofs",
            "module": module_semantics(),
            "exit_status": code,
        }
        try:
            write_file(
                json_path, (json.dumps({**data, "proofs": proofs}, indent=2) + "\n").encode()
            )
        except OSError as e:
            common.fail(f"cannot write {json_path}: {reason(e)}")
        common.out_console.print(f"JSON report written to {json_path}", markup=False)
    common.out_console.print(f"exit status {code}: {EXIT_MEANING.get(code, '')}")
    sys.exit(code)


def _stored(
    fdb: FailureDB | None,
    plan: Plan,
    of: Callable[[FailureDB, str], list[Entry]],
    notes: list[str],
) -> dict[str, list[tuple[str, str, str]]] | None:
    """Per variant its stored failures (``of``: the database's entries of one variant);
    each file that is not a usable entry is one note. None when the database cannot be
    read."""
    if fdb is None:
        return {}
    out: dict[str, list[tuple[str, str, str]]] = {}
    try:
        for v in plan.variants:
            out[v] = [
                (e.kind, e.schedule, e.strategy) for e in of(fdb, v) if e.kind not in plan.ignore
            ]
            for b in fdb.broken:  # a bad file is skipped for every variant: said once
                if f"{DB_NOTE}: {b.warning()}" not in notes:
                    notes.append(f"{DB_NOTE}: {b.warning()}")
    except DatabaseError as e:
        notes.append(f"{DB_NOTE} not used: {e}")
        return None
    return out


def _go(
    plan: Plan,
    board: Board,
    stored: dict[str, list[tuple[str, str, str]]],
    scheduler: str | None,
    workers: int | None,
    retries: int,
) -> None:
    from shmpamt.campaign.cluster import run_campaign

    usage = ""
    with (
        common.trapped_signals() as interrupted,
        Live(
            board.live_table(), console=common.out_console, refresh_per_second=4, transient=True
        ) as live,
    ):

        def on_event(ev: Any) -> None:
            board.add(ev)
            live.update(board.live_table())

        def go() -> None:
            run: CampaignRun = run_campaign(
                plan,
                scheduler=scheduler,
                workers=workers,
                stored=stored,
                on_event=on_event,
                should_stop=lambda: bool(interrupted),
                retries=retries,
            )
            board.missing += run.missing
            board.workers = run.workers
            board.scheduler = run.scheduler

        try:
            go()
        except UsageError as e:
            usage = common.flag_message(e)  # nothing ran (the cluster refused): no report
        except Exception as e:
            if os.environ.get("SHMPAMT_DEBUG"):
                raise
            board.error = f"{type(e).__name__}: {e}"
        board.interrupted = interrupted.signal
    if usage:
        common.fail(usage)


def _remember(fdb: FailureDB, outcomes: list[ShardOutcome]) -> int:
    """Every failing schedule any shard reported goes into the database (de-duplicated)."""
    new = 0
    for o in outcomes:
        if o.result is None:
            continue
        ignored = set(o.result.get("ignored", ()))
        for f in o.result.get("schedules", ()):
            if f["kind"] not in ignored:
                new += fdb.add(f["kind"], f["schedule"], f["strategy"])
    return new


def _finish(
    board: Board, json_path: Path | None, console: Console, fail: Callable[[str], NoReturn]
) -> NoReturn:
    board.render(console)
    if board.error:
        common.err_console.print(f"error: {board.error}", highlight=False, markup=False)
    if json_path is not None:
        try:
            write_file(json_path, (json.dumps(board.to_dict(), indent=2) + "\n").encode())
        except OSError as e:
            fail(f"cannot write {json_path}: {reason(e)}")
        console.print(f"JSON report written to {json_path}", markup=False)
    sys.exit(board.exit_code())
