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
import socket
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import dask
from distributed import Client, Event, Future, LocalCluster, as_completed, get_worker

from shmpamt import api
from shmpamt.campaign.address import check_resolves, check_scheduler, check_tls
from shmpamt.campaign.matrix import Plan, Shard, ShardOutcome
from shmpamt.errors import RunFailure, ShmpamtError, UsageError
from shmpamt.machine.children import sigint_held
from shmpamt.machine.ipc import new_token

#: the worker resource a shard takes: a worker that offers 1 runs one system at a time
RESOURCE: Final = "shmpamt"
#: seconds a stopped campaign waits for running shards to end their runs cleanly
STOP_GRACE: Final = 30.0
#: seconds between two looks at the stop event from inside a task
_POLL: Final = 0.25
#: seconds one attempt to reach a scheduler may take (a Ctrl-C is looked at between them)
_CONNECT_SLICE: Final = 1.0
#: tasks kept submitted: per worker, and at least (a queue, never the whole matrix)
_IN_FLIGHT_PER_WORKER: Final = 2
_MIN_IN_FLIGHT: Final = 4
#: seconds between two looks at how many workers the cluster has
_WORKERS_LOOK: Final = 5.0


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


def _quiet_client_teardown() -> None:
    """Keep a worker's stderr free of one known shutdown message, let all else through.

    The stop event is read through the worker's own Dask client. When the cluster
    shuts down mid-task (a Ctrl-C), that client may be collected after the worker's
    event loop has closed; its destructor then fails ("IOLoop is closed", or a
    timeout), which Python prints as ``Exception ignored in: Client.__del__``. The
    worker is going away and nothing is lost, so that one message is dropped.
    """
    previous = sys.unraisablehook
    if getattr(previous, "shmpamt", False):
        return

    def hook(u: Any) -> None:
        where = getattr(u.object, "__qualname__", "")
        if where == "Client.__del__" and isinstance(u.exc_value, RuntimeError | TimeoutError):
            return
        previous(u)

    hook.shmpamt = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run_shard(shard: Shard, stop_event: str = "") -> dict[str, Any]:
    """One task: run one shard through :func:`shmpamt.api.run`.

    Returns the result as ``VariantResult.to_dict()`` with where it ran. A usage
    error is returned (a retry would fail the same way); a rig failure is raised,
    so Dask retries the shard.
    """
    host, worker = worker_identity()
    out: dict[str, Any] = {"host": host, "worker": worker, "result": None, "error": ""}
    _quiet_client_teardown()
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


#: Dask's own periodic work, slowed for an embedded cluster: a session's steps are a
#: chain of process switches on one pinned core, and every wake-up of a sampler in the
#: worker (the profiler's 10 ms, the memory monitor's 100 ms) or of a 20 ms event-loop
#: tick delays the whole chain; a 2-worker proof on 2 cores has no core to spare.
QUIET: Final = {
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "200ms",
}


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[LocalCluster]:
    """An embedded cluster on 127.0.0.1: ``workers`` processes, one thread and one
    shmpamt system each. The cluster's threads, and so the worker processes they
    start (also later, to replace a lost one), have SIGINT blocked: a terminal's
    Ctrl-C is the client's to handle, and one that comes meanwhile is not lost."""
    with sigint_held(), dask.config.set({"distributed.worker.daemon": False, **QUIET}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            resources={RESOURCE: 1},
            host="127.0.0.1",
            dashboard_address=None,
            # A worker's own log lines (a heartbeat that found the scheduler gone while
            # the cluster shuts down) are noise here: task errors come back as results.
            silence_logs=logging.CRITICAL,
        )
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
    has schedules for it) and return the outcomes as they were when it ended.

    A malformed ``scheduler`` address is a UsageError before anything starts; one
    that does not answer is one after ``connect_timeout`` seconds (or at once
    when ``should_stop``).
    """
    address = None
    if scheduler is not None:
        address = check_scheduler(scheduler)
        check_tls(address, lambda key: dask.config.get(key, None))
    with contextlib.ExitStack() as stack:
        if address is None:
            n = workers or os.cpu_count() or 1
            cluster = stack.enter_context(local_cluster(n))
            client = stack.enter_context(Client(cluster, set_as_default=False))
        else:
            check_resolves(address)
            got = _connect(address, connect_timeout, should_stop)
            if got is None:  # stopped while connecting: nothing ran
                missing = [plan.shard_id(i) for i in range(plan.size)]
                return CampaignRun(interrupted=True, missing=missing, scheduler=address)
            client = stack.enter_context(got)
        return _drive(client, plan, stored or {}, on_event, should_stop, retries, address)
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: ExitStack may swallow)


def _connect(address: str, timeout: float, should_stop: Callable[[], bool]) -> Client | None:
    """A client of the scheduler at ``address``; None once ``should_stop``. It tries in
    slices of a second, so a Ctrl-C while a scheduler does not answer stops at once."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return Client(
                address, timeout=max(0.5, min(_CONNECT_SLICE, left)), set_as_default=False
            )
        except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
            raise UsageError(f"cannot connect to {address}: {e}", "scheduler") from None
        except OSError as e:
            if should_stop():
                return None
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"cannot reach the scheduler {address} within {timeout:g} s: {e}",
                    "scheduler",
                ) from None
        except Exception as e:  # a TLS or protocol error: trying again will not help
            raise UsageError(
                f"cannot connect to {address}: {type(e).__name__}: {e}", "scheduler"
            ) from None


def _drive(
    client: Client,
    plan: Plan,
    stored: dict[str, list[tuple[str, str, str]]],
    on_event: Callable[[Event_], None] | None,
    should_stop: Callable[[], bool],
    retries: int,
    scheduler: str | None,
) -> CampaignRun:
    """Submit as workers free up (a few tasks per worker in flight, never the whole
    matrix), collect as tasks finish, stop at ``should_stop``.

    Keeping the queue short is what makes a stop fast whatever the matrix's size:
    only the tasks in flight are cancelled or waited for, and shards never
    submitted are simply reported as not run.
    """
    run = CampaignRun(scheduler=scheduler or "local")
    run.workers = len(client.scheduler_info(n_workers=-1)["workers"])
    opts = _task_options(client)
    token = new_token()
    stop_name = f"shmpamt-stop-{token}"
    stop_event = Event(stop_name, client=client)
    pending: dict[Future[Any], Shard | str] = {}
    done = as_completed(loop=client.loop)
    todo = plan.iter_shards()
    submitted = 0
    in_flight = _in_flight(run.workers)
    next_look = time.monotonic() + _WORKERS_LOOK
    try:
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
                done.add(fut)
        while True:
            if should_stop():
                run.interrupted = True
                _stop(client, stop_event, pending, done, run, on_event)
                break
            if time.monotonic() >= next_look:  # workers may join (or leave) a cluster
                run.workers = max(run.workers, len(client.scheduler_info()["workers"]))
                in_flight = _in_flight(run.workers)
                next_look = time.monotonic() + _WORKERS_LOOK
            while len(pending) < in_flight and (shard := next(todo, None)) is not None:
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
                done.add(fut)
                submitted += 1
            if not pending:
                break
            for fut in done.next_batch(block=False):
                what = pending.pop(fut, None)
                if what is None:
                    continue  # as_completed may hand a retried task back twice: count it once
                ev = _collect(client, fut, what)
                if ev is not None:
                    _record(run, ev, on_event)
            time.sleep(0.05)
    finally:
        leftover = [f for f in pending if not f.done()]
        if leftover:
            client.cancel(leftover, force=True)
        with contextlib.suppress(Exception):
            stop_event.clear()
    # never submitted (the run was stopped)
    run.missing.extend(plan.shard_id(i) for i in range(submitted, plan.size))
    return run


def _in_flight(workers: int) -> int:
    """Tasks to keep submitted: each worker busy and one more queued for it."""
    return max(_MIN_IN_FLIGHT, _IN_FLIGHT_PER_WORKER * workers)


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
    own IPC objects, and what they found so far is reported); the few submitted shards
    not yet started are cancelled."""
    stop_event.set()
    running = {k for keys in client.processing().values() for k in keys}
    waiting = [f for f in pending if f.key not in running and not f.done()]
    if waiting:
        client.cancel(waiting, force=True)
    deadline = time.monotonic() + STOP_GRACE
    while any(not f.done() for f in pending) and time.monotonic() < deadline:
        _collect_batch(client, pending, done, run, on_event)
        time.sleep(0.05)
    _collect_batch(client, pending, done, run, on_event)
    for what in pending.values():
        if isinstance(what, Shard):
            run.missing.append(what.id)
    late = [f for f in pending if not f.done()]
    if late:
        client.cancel(late, force=True)
    pending.clear()


def _collect_batch(
    client: Client,
    pending: dict[Future[Any], Shard | str],
    done: as_completed,
    run: CampaignRun,
    on_event: Callable[[Event_], None] | None,
) -> None:
    for fut in done.next_batch(block=False):
        what = pending.pop(fut, None)
        if what is not None:
            ev = _collect(client, fut, what)
            if ev is not None:
                _record(run, ev, on_event)


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
