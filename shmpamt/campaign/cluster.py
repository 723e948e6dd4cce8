"""Dask glue: a campaign's shards as tasks on a ``distributed`` cluster.

The client side (:func:`run_campaign`) starts an embedded ``LocalCluster`` (one
process per core, one thread each) or connects to a scheduler, submits one task
per shard with a resource that lets each worker run one shmpamt system at a
time, and streams outcomes back as they complete. The worker side
(:func:`run_shard`, :func:`run_regressions`) goes through :mod:`shmpamt.api`
like every other front end.

Stopping: the client sets a named ``distributed.Event``; each task polls it as
its ``should_stop`` (at most every 0.25 s), so a running shard ends its run the
normal way and its processes remove every IPC object; tasks not yet started
are cancelled. Retries: an exception in a task is retried ``retries`` times; a
worker lost mid-task makes the scheduler run the task again elsewhere. Either
way the scheduler's transition log shows the task entering ``processing`` more
than once, which is how a shard's ``attempts`` is counted.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dask
from distributed import Client, Event, Future, LocalCluster, as_completed, get_worker

from shmpamt import api
from shmpamt.campaign.matrix import Plan, Shard, ShardOutcome
from shmpamt.errors import RunFailure, ShmpamtError, UsageError
from shmpamt.machine.ipc import new_token

#: the worker resource a shard takes: a worker that offers 1 runs one system at a time
RESOURCE: Final = "shmpamt"
#: seconds a stopped campaign waits for running shards to end their runs cleanly
STOP_GRACE: Final = 30.0
#: seconds between two looks at the stop event from inside a task
_POLL: Final = 0.25


# --- the worker side ---------------------------------------------------------------------


def worker_identity() -> tuple[str, str]:
    """(host name, worker name or address) of the process running this task."""
    host = socket.gethostname()
    try:
        w = get_worker()
    except ValueError:
        return host, f"pid {os.getpid()}"
    return host, str(w.name) if w.name is not None else str(w.address)


def _allow_children() -> None:
    """A Dask worker process is daemonic by default, and multiprocessing refuses to start
    children from a daemonic process. A shard's daemon and CPUs are owned, watched and
    removed by its Fleet, and they notice a dead parent, so the worker may have them."""
    me = mp.current_process()
    if me.daemon:
        me.daemon = False


class _StopFlag:
    """The campaign's stop event as a ``should_stop``: cheap to call on every execution."""

    def __init__(self, name: str) -> None:
        self.event = Event(name) if name else None
        self.fired = False
        self._next = 0.0

    def __call__(self) -> bool:
        if self.fired or self.event is None:
            return self.fired
        now = time.monotonic()
        if now >= self._next:
            self._next = now + _POLL
            self.fired = bool(self.event.is_set())
        return self.fired


def run_shard(shard: Shard, stop_event: str = "") -> dict[str, Any]:
    """One task: run one shard through :func:`shmpamt.api.run`.

    Returns the result as ``VariantResult.to_dict()`` with where it ran. A usage
    error is returned (a retry would fail the same way); a rig failure is raised,
    so Dask retries the shard.
    """
    host, worker = worker_identity()
    out: dict[str, Any] = {"host": host, "worker": worker, "result": None, "error": ""}
    stop = _StopFlag(stop_event)
    if stop():
        return {**out, "stopped": True, "error": "not started: the campaign was stopped"}
    _allow_children()
    # One system per worker and each on its own core: the worker's name picks it.
    os.environ["SHMPAMT_CORE_SLOT"] = str(
        int(worker) if worker.isdigit() else zlib.crc32(worker.encode())
    )
    try:
        res = api.run(shard.config(), should_stop=stop)
    except UsageError as e:
        return {**out, "error": f"{type(e).__name__}: {e}"}
    return {**out, "result": res.to_dict(), "stopped": stop.fired}


def run_regressions(variant: str, stored: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """One task: replay a variant's stored (kind, schedule, strategy) failures."""
    host, worker = worker_identity()
    _allow_children()
    regs, _ = api.check_stored([api.Stored(*t) for t in stored], variant=variant)
    strategy = {(kind, schedule): how for kind, schedule, how in stored}
    return {
        "host": host,
        "worker": worker,
        "variant": variant,
        "regressions": [
            {**r.to_dict(), "strategy": strategy.get((r.kind, r.schedule), "")} for r in regs
        ],
    }


# --- the client side ---------------------------------------------------------------------


@dataclass(frozen=True)
class RegressionOutcome:
    variant: str
    #: Regression.to_dict() of each stored schedule replayed
    regressions: list[dict[str, Any]]
    where: str = ""
    error: str = ""

    @property
    def still(self) -> list[tuple[str, str, int, str]]:
        """(kind, schedule, steps, strategy) of each stored schedule that still fails."""
        return [
            (r["kind"], r["schedule"], int(r.get("steps", 0)), r.get("strategy", "stored"))
            for r in self.regressions
            if r["still_fails"]
        ]


@dataclass
class CampaignRun:
    """What a campaign brought back (partial when interrupted)."""

    outcomes: list[ShardOutcome] = field(default_factory=list)
    regressions: list[RegressionOutcome] = field(default_factory=list)
    interrupted: bool = False
    #: shards that never reported (cancelled before they ran, or stopped too late)
    missing: list[str] = field(default_factory=list)
    scheduler: str = ""
    workers: int = 0


Event_ = ShardOutcome | RegressionOutcome


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[LocalCluster]:
    """An embedded cluster on 127.0.0.1: ``workers`` processes, one thread and one
    shmpamt system each. Worker processes start with SIGINT ignored (as the rig's CPU
    and daemon processes do): a terminal's Ctrl-C is the client's to handle."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with dask.config.set({"distributed.worker.daemon": False}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                resources={RESOURCE: 1},
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        yield cluster
    finally:
        cluster.close()


def attempts(client: Client, key: str) -> int:
    """How many times the scheduler sent ``key`` to a worker (its transition log)."""
    try:
        story = client.story(key)
    except Exception:
        return 1
    n = sum(1 for r in story if r[0] == "scheduler" and len(r) >= 4 and r[3] == "processing")
    return max(1, n)


def _task_options(client: Client) -> dict[str, Any]:
    """Use the resource where workers offer it; else require one thread per worker."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any(RESOURCE in (w.get("resources") or {}) for w in workers):
        return {"resources": {RESOURCE: 1}}
    if workers and all(int(w.get("nthreads", 1)) == 1 for w in workers):
        return {}
    raise UsageError(
        f"the cluster's workers offer no '{RESOURCE}' resource: start them with "
        f"'dask worker SCHEDULER --nthreads 1 --resources {RESOURCE}=1'",
        "scheduler",
    )


def run_campaign(
    plan: Plan,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    stored: dict[str, list[tuple[str, str, str]]] | None = None,
    on_event: Callable[[Event_], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    retries: int = 2,
    connect_timeout: float = 30.0,
) -> CampaignRun:
    """Run every shard of ``plan`` (after each variant's regression check, if ``stored``
    has schedules for it) and return the outcomes as they were when it ended."""
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            n = workers or os.cpu_count() or 1
            cluster = stack.enter_context(local_cluster(n))
            client = stack.enter_context(Client(cluster, set_as_default=False))
        else:
            try:
                client = stack.enter_context(
                    Client(scheduler, timeout=connect_timeout, set_as_default=False)
                )
            except OSError as e:
                msg = f"cannot reach the scheduler {scheduler}: {e}"
                raise UsageError(msg, "scheduler") from None
        return _drive(client, plan, stored or {}, on_event, should_stop, retries, scheduler)
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: ExitStack may swallow)


def _drive(
    client: Client,
    plan: Plan,
    stored: dict[str, list[tuple[str, str, str]]],
    on_event: Callable[[Event_], None] | None,
    should_stop: Callable[[], bool],
    retries: int,
    scheduler: str | None,
) -> CampaignRun:
    run = CampaignRun(scheduler=scheduler or "local")
    run.workers = len(client.scheduler_info(n_workers=-1)["workers"])
    opts = _task_options(client)
    token = new_token()
    stop_name = f"shmpamt-stop-{token}"
    stop_event = Event(stop_name, client=client)
    pending: dict[Future[Any], Shard | str] = {}
    # The regression checks go first (higher priority): they are the cheap, certain part.
    for variant, items in stored.items():
        if items and variant in plan.variants:
            fut = client.submit(
                run_regressions,
                variant,
                list(items),
                key=f"shmpamt-regress-{token}-{plan.variants.index(variant)}",
                priority=10,
                retries=retries,
                pure=False,
                **opts,
            )
            pending[fut] = variant
    for shard in plan.shards():
        fut = client.submit(
            run_shard,
            shard,
            stop_name,
            key=f"shmpamt-shard-{token}-{shard.index}",
            retries=retries,
            pure=False,
            **opts,
        )
        pending[fut] = shard
    done = as_completed(list(pending), loop=client.loop)
    try:
        while not done.is_empty():
            if should_stop():
                run.interrupted = True
                _stop(client, stop_event, pending, done, run, on_event)
                break
            for fut in done.next_batch(block=False):
                what = pending.pop(fut, None)
                if what is None:
                    continue  # as_completed may hand a retried task back twice: count it once
                ev = _collect(client, fut, what)
                if ev is None:
                    continue
                _record(run, ev, on_event)
            time.sleep(0.05)
    finally:
        leftover = [f for f in pending if not f.done()]
        if leftover:
            client.cancel(leftover, force=True)
        with contextlib.suppress(Exception):
            stop_event.clear()
    return run


def _record(run: CampaignRun, ev: Event_, on_event: Callable[[Event_], None] | None) -> None:
    if isinstance(ev, ShardOutcome):
        run.outcomes.append(ev)
    else:
        run.regressions.append(ev)
    if on_event is not None:
        on_event(ev)


def _stop(
    client: Client,
    stop_event: Event,
    pending: dict[Future[Any], Shard | str],
    done: as_completed,
    run: CampaignRun,
    on_event: Callable[[Event_], None] | None,
) -> None:
    """Ctrl-C: running shards are told to stop and waited for (their runs remove their
    own IPC objects); shards not yet started are cancelled."""
    stop_event.set()
    running = {k for keys in client.processing().values() for k in keys}
    waiting = [f for f in pending if f.key not in running and not f.done()]
    client.cancel(waiting, force=True)
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        live = [f for f in pending if not f.done()]
        for fut in done.next_batch(block=False):
            if fut in pending:
                ev = _collect(client, fut, pending.pop(fut))
                if ev is not None:
                    _record(run, ev, on_event)
        if not live:
            break
        time.sleep(0.05)
    for f, what in pending.items():
        if isinstance(what, Shard):
            run.missing.append(what.id)
        if not f.done():
            client.cancel([f], force=True)
    pending.clear()


def _collect(client: Client, fut: Future[Any], what: Shard | str) -> Event_ | None:
    """The outcome a finished future stands for (None for a cancelled one)."""
    if fut.status == "cancelled":
        return None
    tries = attempts(client, str(fut.key))
    if fut.status == "error":
        exc = fut.exception()
        msg = f"{type(exc).__name__}: {exc}"
        if isinstance(what, str):
            return RegressionOutcome(what, [], error=msg)
        if not isinstance(exc, ShmpamtError | RunFailure):
            msg = f"task failed after {tries} attempt(s): {msg}"
        return ShardOutcome(what, None, attempts=tries, error=msg)
    value: dict[str, Any] = fut.result()
    where = f"{value['host']}:{value['worker']}"
    if isinstance(what, str):
        return RegressionOutcome(what, value["regressions"], where)
    return ShardOutcome(
        what,
        value["result"],
        host=value["host"],
        worker=value["worker"],
        attempts=tries,
        error=value.get("error", ""),
        stopped=bool(value.get("stopped")),
    )
