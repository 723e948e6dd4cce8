"""``shmpamt campaign --strategy dpor``: one distributed proof per variant and scenario.

Imported by :mod:`shmpamt.cli.campaign` when a plan has the dpor strategy (it
loads Dask): each variant's proof runs as subtree tasks on one cluster
(:mod:`shmpamt.campaign.proof`), with its frontier checkpointed under the
failure database's directory so that ``--resume`` continues an interrupted one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from distributed import Client
from rich.console import Console
from rich.live import Live

from shmpamt.campaign.cluster import local_cluster
from shmpamt.campaign.matrix import Plan
from shmpamt.campaign.proof import (
    DEFAULT_DEPTH,
    VERIFIED,
    Frontier,
    ProofProgress,
    ProofSpec,
    check_checkpoint_target,
    checkpoint_path,
    run_proof,
)
from shmpamt.cli import common
from shmpamt.errors import UsageError
from shmpamt.report.terminal import (
    EXIT_CLEAN,
    EXIT_ERROR,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_VIOLATIONS,
    compact,
)


@dataclass
class ProofOutcome:
    spec: ProofSpec
    frontier: Frontier | None = None
    checkpoint: Path | None = None
    resumed: bool = False
    workers: int = 0
    wall: float = 0.0
    error: str = ""
    ignore: frozenset[str] = frozenset()

    @property
    def failing(self) -> list[str]:
        f = self.frontier
        return [k for k in f.kinds if k not in self.ignore] if f else []

    def to_dict(self) -> dict[str, Any]:
        f = self.frontier
        return {
            "proof": self.spec.to_dict(),
            "reductions": list(self.spec.reductions),
            "verdict": f.verdict if f and not self.error else "incomplete",
            "reason": self.error or (f.reason() if f else ""),
            "complete_executions": f.total("complete") if f else 0,
            "executions": f.total("executions") if f else 0,
            "sleep_blocked": f.total("sleep_blocked") if f else 0,
            "deadlocks": f.total("deadlocks") if f else 0,
            "executions_run": f.executions_run if f else 0,
            "tasks": len(f.log) if f else 0,
            "retried": dict(f.failures) if f else {},
            "kinds": f.kinds if f else {},
            "failing": self.failing,
            "findings": [
                {**v, "replay": f"shmpamt replay {v['schedule']}"}
                for _, v in sorted(f.findings.items())
            ]
            if f
            else [],
            "seconds": f.elapsed if f else 0.0,
            "resumed": self.resumed,
            "workers": self.workers,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
        }


@dataclass
class ProofBoard:
    outcomes: list[ProofOutcome] = field(default_factory=list)
    interrupted: str = ""
    scheduler: str = ""

    def exit_code(self) -> int:
        if self.interrupted == "SIGINT":
            return EXIT_SIGINT
        if self.interrupted == "SIGTERM":
            return EXIT_SIGTERM
        if any(o.failing for o in self.outcomes):
            return EXIT_VIOLATIONS
        if any(o.error or not o.frontier or o.frontier.verdict != VERIFIED for o in self.outcomes):
            return EXIT_ERROR
        return EXIT_CLEAN

    def to_dict(self) -> list[dict[str, Any]]:
        return [o.to_dict() for o in self.outcomes]


def _line(p: ProofProgress) -> str:
    est = f", ~{compact(p.estimate)} estimated" if p.estimate is not None else ""
    left = f", ~{p.seconds_left:.0f} s left" if p.seconds_left is not None else ""
    return (
        f"proof {p.name}: {p.tasks_done} subtree task(s) done, {p.outstanding} outstanding "
        f"({p.running} running), {compact(p.complete)} complete executions{est}{left}, "
        f"{p.elapsed:.0f} s"
    )


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = stack.enter_context(local_cluster(workers or os.cpu_count() or 1))
            yield stack.enter_context(Client(cluster, set_as_default=False))
            return
        try:
            client = stack.enter_context(Client(scheduler, timeout=30, set_as_default=False))
        except OSError as e:
            raise UsageError(f"cannot reach the scheduler {scheduler}: {e}", "scheduler") from None
        yield client


def prove_all(
    plan: Plan,
    *,
    scheduler: str | None,
    workers: int | None,
    db: str | None,
    resume: bool,
    slice_: int,
    depth: int = DEFAULT_DEPTH,
    symmetry: bool = True,
    ranges: int = 1,
    halt_at_violation: bool = False,
) -> ProofBoard:
    """Run (or resume) one proof per variant of ``plan``; render each as it ends."""
    specs: list[ProofSpec] = [
        common.build(
            partial(
                ProofSpec,
                v,
                plan.cpus,
                plan.rounds,
                ranges,
                plan.seed,
                slice_,
                depth,
                symmetry,
                halt_at_violation,
            )
        )
        for v in plan.variants
    ]
    if halt_at_violation and plan.ignore:
        common.fail(
            "--halt-at-violation with --ignore: a proof's tasks halt at every kind; explore "
            "--strategy dpor --halt-at-violation runs past the ignored ones"
        )
    if resume and db is None:
        common.fail("--resume needs the failure database's directory for its checkpoint (--db)")
    # Every checkpoint is checked (and read, for --resume) before a cluster starts.
    prepared = [_prepare(spec, db, resume) for spec in specs]
    board = ProofBoard(scheduler=scheduler or "local")
    with common.trapped_signals() as interrupted:
        try:
            with _client(scheduler, workers) as client:
                for spec, (path, frontier) in zip(specs, prepared, strict=True):
                    if interrupted:
                        break
                    board.outcomes.append(_one(client, spec, path, frontier, plan, interrupted))
        except UsageError as e:
            common.fail(common.flag_message(e))
        board.interrupted = interrupted.signal
    return board


def _prepare(spec: ProofSpec, db: str | None, resume: bool) -> tuple[Path | None, Frontier]:
    """The proof's checkpoint path and its frontier: fresh, or read back for ``resume``
    (a damaged, planted or foreign checkpoint: one line, exit 2)."""
    console = common.out_console
    path = checkpoint_path(db, spec) if db else None
    frontier = Frontier(spec)
    if path is None:
        return None, frontier
    # A link or a folder at the checkpoint's name: refused before anything runs.
    common.build(partial(check_checkpoint_target, path))
    if not path.exists():
        return path, frontier
    if not resume:
        console.print(f"proof {spec.name}: starting afresh over {path} (--resume continues it)")
        return path, frontier
    frontier = common.build(partial(Frontier.load, path, spec))
    frontier.resumed = True
    console.print(
        f"proof {spec.name}: resuming {path}: {len(frontier.outstanding)} "
        f"subtree(s) outstanding, {compact(frontier.total('complete'))} complete "
        "executions counted"
    )
    return path, frontier


def _one(
    client: Client,
    spec: ProofSpec,
    path: Path | None,
    frontier: Frontier,
    plan: Plan,
    interrupted: Any,
) -> ProofOutcome:
    console = common.out_console
    out = ProofOutcome(spec, ignore=plan.ignore)
    out.checkpoint = path
    out.resumed = frontier.resumed
    out.frontier = frontier
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        try:
            run = run_proof(
                client,
                frontier,
                checkpoint=out.checkpoint,
                on_progress=lambda p: live.update(_line(p)),
                should_stop=lambda: bool(interrupted),
            )
            out.workers, out.wall = run.workers, run.wall
        except UsageError:
            raise
        except Exception as e:
            if os.environ.get("SHMPAMT_DEBUG"):
                raise
            out.error = f"{type(e).__name__}: {e}"
    render(out, console, bool(interrupted))
    return out


def render(o: ProofOutcome, console: Console, interrupted: bool) -> None:
    f = o.frontier
    assert f is not None
    d = o.to_dict()
    counts = (
        f"{d['executions']} executions, {d['sleep_blocked']} sleep-set blocked, "
        f"{d['deadlocks']} ending in deadlock"
    )
    how = f"split depth {o.spec.depth}" + ("" if o.spec.symmetry else ", no symmetry")
    how += "".join(f", with {r}" for r in o.spec.reductions)
    where = f"{d['tasks']} subtree task(s) on {o.workers} worker(s), {how}, {f.elapsed:.1f} s"
    if d["verdict"] == VERIFIED:
        console.print(
            f"proof {o.spec.name}: [green]verified[/green]: all classes of interleavings "
            f"with no injected fault explored, in {d['complete_executions']} complete "
            f"executions ({counts}); {where}"
        )
    else:
        console.print(
            f"proof {o.spec.name}: [yellow]incomplete[/yellow]: {d['reason']}; "
            f"{d['complete_executions']} complete executions counted so far ({counts}); {where}"
        )
    if f.executions_run > d["executions"]:
        console.print(
            f"  {f.executions_run} executions run in all: the rest were pieces in "
            "progress when a task was stopped or handed a just-entered piece to an idle "
            "worker, explored again by their own tasks"
        )
    for kind, n in f.kinds.items():
        best = f.findings.get(kind)
        tag = " (ignored)" if kind in o.ignore else ""
        replay = f": [cyan]shmpamt replay {best['schedule']}[/cyan]" if best else ""
        console.print(f"  [bold]{kind}[/bold]{tag}: {n} execution(s){replay}")
    for prefix, reasons in sorted(f.failures.items()):
        console.print(
            f"  [yellow]retried[/yellow]: subtree [{prefix.replace('.', ', ')}] failed "
            f"{len(reasons)} time(s): {reasons[-1]}"
        )
    if interrupted and o.checkpoint is not None:
        console.print(
            f"[yellow]interrupted: the frontier is saved in {o.checkpoint}; add --resume to "
            "continue[/yellow]"
        )
