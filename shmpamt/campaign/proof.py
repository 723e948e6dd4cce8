"""A DPOR proof past one machine: subtrees as Dask tasks, a checkpointed frontier.

The proof of one variant in one scenario starts as one task, the whole tree
(prefix ``()``). A task explores its subtree for a slice
(:mod:`shmpamt.schedulers.subtree`) and reports the children it finished plus
the ones it did not, which go back into the :class:`Frontier` as new tasks, so
the load spreads itself over however many workers there are. Every complete
execution is counted by exactly one finished child (:meth:`Frontier.apply`
refuses a child counted twice); the verdict is "verified" only when nothing is
outstanding and no task failed twice, else "incomplete" with the reason.

Faults of the cluster: a worker lost mid-task makes Dask run the task again
elsewhere; a task that raised is submitted once more; a second failure gives
up on that subtree (the rest of the proof still runs, and its kinds are
reported), and the verdict is "incomplete". Ctrl-C stops the running tasks
(each keeps the children it finished) and leaves the frontier on disk.

The frontier is checkpointed after every task (a temporary file made with
O_EXCL, then renamed over the old one) as
``<db>/proofs/<variant>-<cpus>x<rounds>x<ranges>-s<seed>-<hash>.json``; a run with
``resume`` continues from it. Because slices count executions, the tree of
tasks is fixed by the scenario and the slice: a resumed, retried or
interrupted proof ends with the same count as one that ran straight through.

The estimate of what is left uses completed subtrees: an outstanding task is
guessed as large as the mean of its finished siblings (or of finished subtrees
at its depth), and the time left is that over the proof's rate so far. DPOR's
subtrees are uneven (the first child of a split state is the big one: nothing
sleeps in it), so the figure is rough until the first level is done.

:func:`simulate` replays a proof's task log on N workers, with a cost per task,
to say how the proof would scale on a cluster this machine does not have.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from distributed import Client, Event, Future, as_completed

from shmpamt.campaign.cluster import (
    _allow_children,
    _StopFlag,
    _task_options,
    worker_identity,
)
from shmpamt.config import Scenario, check_int
from shmpamt.errors import UsageError
from shmpamt.explorer.subtree import SubtreeTask, run_subtree, session_for
from shmpamt.machine.ipc import new_token
from shmpamt.schedulers.dpor import MAX_SUBTREE_DEPTH

#: executions a task runs before it hands back the children it has not finished
DEFAULT_SLICE: Final = 400
#: attempts of one subtree before the proof gives up on it
MAX_ATTEMPTS: Final = 2
#: split states per path of a proof's tree of subtrees (see :mod:`shmpamt.schedulers.subtree`)
DEFAULT_DEPTH: Final = 8
#: what the checkpoint's format is (a file of another format is not resumed)
FORMAT: Final = 2
#: seconds a stopped proof waits for its running tasks to end
STOP_GRACE: Final = 30.0
#: seconds between a task's looks at whether a worker is idle
WANTED_POLL: Final = 0.1
VERIFIED: Final = "verified"
INCOMPLETE: Final = "incomplete"

Prefix = tuple[int, ...]


@dataclass(frozen=True)
class ProofSpec:
    """One proof: a variant in one scenario, cut with one slice."""

    variant: str
    cpus: int = 2
    rounds: int = 2
    ranges: int = 1
    seed: int = 0
    slice: int = DEFAULT_SLICE
    depth: int = DEFAULT_DEPTH

    def __post_init__(self) -> None:
        check_int("slice", self.slice, 1, 10_000_000)
        check_int("split depth", self.depth, 0, MAX_SUBTREE_DEPTH)
        self.scenario  # noqa: B018  (validates the variant, cpus, rounds and ranges)

    @property
    def scenario(self) -> Scenario:
        return Scenario(self.variant, self.cpus, self.rounds, self.ranges)

    @property
    def name(self) -> str:
        return f"{self.variant} {self.cpus}x{self.rounds}x{self.ranges} seed {self.seed}"

    def key(self) -> str:
        """A file name that changes with anything that changes the tree of tasks."""
        s = self.scenario
        ident = json.dumps(
            [
                FORMAT,
                s.variant,
                s.source,
                s.cpus,
                s.rounds,
                s.ranges,
                self.seed,
                self.slice,
                self.depth,
            ]
        )
        short = hashlib.sha256(ident.encode()).hexdigest()[:12]
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(s.variant.split(":")[0]).stem)[:40]
        return f"{base}-{s.cpus}x{s.rounds}x{s.ranges}-s{self.seed}-{short}"

    def task(self, prefix: Prefix, known: Iterable[str] = ()) -> SubtreeTask:
        limit = None if len(prefix) >= self.depth else self.slice
        return SubtreeTask(
            self.variant,
            self.cpus,
            self.rounds,
            self.ranges,
            self.seed,
            prefix,
            limit,
            self.depth,
            frozenset(known),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "cpus": self.cpus,
            "rounds": self.rounds,
            "ranges": self.ranges,
            "seed": self.seed,
            "slice": self.slice,
            "depth": self.depth,
        }


def _path(s: str) -> Prefix:
    return tuple(int(x) for x in s.split(".")) if s else ()


def _name(p: Prefix) -> str:
    return ".".join(map(str, p))


@dataclass
class Frontier:
    """A proof as it stands: what is finished (counted), outstanding and failed."""

    spec: ProofSpec
    outstanding: list[Prefix] = field(default_factory=lambda: [()])
    #: finished children (or whole leaf subtrees) by path: their counts and kinds
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: failed attempts by prefix: the reasons
    failures: dict[str, list[str]] = field(default_factory=dict)
    #: subtrees given up on (failed MAX_ATTEMPTS times), with the last reason
    given_up: dict[str, str] = field(default_factory=dict)
    #: the fewest-steps schedule of each kind: kind, schedule, found, steps
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: one record per finished task: prefix, children handed back, executions, seconds
    log: list[dict[str, Any]] = field(default_factory=list)
    #: wall seconds the proof has run, over every run that resumed it
    elapsed: float = 0.0
    #: executions run, also by tasks whose in-progress child was discarded
    executions_run: int = 0
    #: names of every proper prefix of a finished subtree's path (to refuse overlaps)
    _inner: set[str] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in self.parts:
            path = _path(name)
            self._inner.update(_name(path[:d]) for d in range(len(path)))

    # -- the protocol ----------------------------------------------------------------------

    def apply(self, result: dict[str, Any], where: str = "") -> bool:
        """Fold one task's result in; False if its prefix was not outstanding (a stale
        duplicate, ignored)."""
        prefix = tuple(result["prefix"])
        if prefix not in self.outstanding:
            return False
        handed = [tuple(p) for p in result["outstanding"]]
        for name, part in result["finished"].items():
            path = _path(name)
            # Invariant: every subtree is counted by exactly one task: a finished one lies
            # in the task's subtree, and overlaps no other finished or outstanding one.
            if path[: len(prefix)] != prefix or self._overlaps(path, prefix, handed):
                raise AssertionError(f"subtree {list(path)} counted twice")
            self.parts[name] = part
            self._inner.update(_name(path[:d]) for d in range(len(path)))
        self.outstanding.remove(prefix)
        self.outstanding.extend(handed)
        for f in result["findings"]:
            best = self.findings.get(f["kind"])
            if best is None or (f["steps"], f["schedule"]) < (best["steps"], best["schedule"]):
                self.findings[f["kind"]] = dict(f)
        self.executions_run += int(result["executions"])
        self.log.append(
            {
                "prefix": list(prefix),
                "handed": [list(p) for p in handed],
                "executions": int(result["executions"]),
                "seconds": float(result["seconds"]),
                "start_s": float(result.get("start_s", 0.0)),
                "where": where,
            }
        )
        return True

    def _overlaps(self, path: Prefix, task: Prefix, handed: list[Prefix]) -> bool:
        """True if ``path`` overlaps a finished subtree, one handed back, or an outstanding
        one other than its own task's."""
        if _name(path) in self._inner or any(
            _name(path[:d]) in self.parts for d in range(len(path) + 1)
        ):
            return True
        others = [o for o in self.outstanding if o != task]
        return any(q[: len(path)] == path or path[: len(q)] == q for q in handed + others)

    def fail(self, prefix: Prefix, reason: str) -> bool:
        """Record a failed attempt; True when the subtree is given up on."""
        tries = self.failures.setdefault(_name(prefix), [])
        tries.append(reason)
        if len(tries) >= MAX_ATTEMPTS:
            self.given_up[_name(prefix)] = reason
            if prefix in self.outstanding:
                self.outstanding.remove(prefix)
            return True
        return False

    def attempts(self, prefix: Prefix) -> int:
        return len(self.failures.get(_name(prefix), ())) + 1

    # -- what it adds up to ------------------------------------------------------------

    def total(self, key: str) -> int:
        return sum(int(p.get(key, 0)) for p in self.parts.values())

    @property
    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.parts.values():
            for k, n in p.get("kinds", {}).items():
                out[k] = out.get(k, 0) + int(n)
        return dict(sorted(out.items()))

    @property
    def done(self) -> bool:
        return not self.outstanding

    @property
    def verdict(self) -> str:
        return VERIFIED if self.done and not self.given_up else INCOMPLETE

    def reason(self) -> str:
        """Why the proof is not verified ('' when it is)."""
        if self.given_up:
            first = sorted(self.given_up.items())
            return "; ".join(
                f"subtree {list(_path(p))} failed {MAX_ATTEMPTS} times: {r}" for p, r in first
            )
        if self.outstanding:
            return f"{len(self.outstanding)} subtree(s) not explored (stopped)"
        return ""

    def estimate(self) -> tuple[int | None, float | None]:
        """(complete executions the whole tree is guessed to have, seconds left), or
        None where nothing is known yet (see the module docstring)."""
        done = self.total("complete")
        if not self.outstanding:
            return done, 0.0
        sizes = self._finished_subtrees()
        guess = 0.0
        for p in self.outstanding:
            sibs = [n for q, n in sizes.items() if len(q) == len(p) and q[:-1] == p[:-1]]
            same = sibs or [n for q, n in sizes.items() if len(q) == len(p)]
            if not same:
                return None, None
            guess += sum(same) / len(same)
        total = done + round(guess)
        rate = done / self.elapsed if self.elapsed > 0 else 0.0
        return total, (guess / rate if rate > 0 else None)

    def _finished_subtrees(self) -> dict[Prefix, int]:
        """Complete executions of every subtree with nothing outstanding below it."""
        sizes: dict[Prefix, int] = {}
        for name, part in self.parts.items():
            path = _path(name)
            for d in range(1, len(path) + 1):
                sizes[path[:d]] = sizes.get(path[:d], 0) + int(part.get("complete", 0))
        return {
            q: n
            for q, n in sizes.items()
            if not any(o[: len(q)] == q for o in self.outstanding) and _name(q) not in self.given_up
        }

    # -- the checkpoint ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "spec": self.spec.to_dict(),
            "outstanding": [list(p) for p in self.outstanding],
            "parts": self.parts,
            "failures": self.failures,
            "given_up": self.given_up,
            "findings": self.findings,
            "log": self.log,
            "elapsed": self.elapsed,
            "executions_run": self.executions_run,
        }

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically: a new file (O_EXCL), then a rename over."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{new_token()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Path, spec: ProofSpec) -> Frontier:
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise UsageError(f"cannot read the checkpoint {path}: {e.strerror}") from None
        except ValueError as e:
            raise UsageError(f"the checkpoint {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"the checkpoint {path} is of another format; remove it")
        if data.get("spec") != spec.to_dict():
            raise UsageError(f"the checkpoint {path} is of another proof: {data.get('spec')}")
        try:
            return cls(
                spec,
                outstanding=[tuple(p) for p in data["outstanding"]],
                parts=dict(data["parts"]),
                failures={k: list(v) for k, v in data["failures"].items()},
                given_up=dict(data["given_up"]),
                findings=dict(data["findings"]),
                log=list(data["log"]),
                elapsed=float(data["elapsed"]),
                executions_run=int(data["executions_run"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"the checkpoint {path} is damaged ({e}); remove it") from None


def checkpoint_path(db: str, spec: ProofSpec) -> Path:
    return Path(db) / "proofs" / f"{spec.key()}.json"


# --- the worker side ---------------------------------------------------------------------


class _Wanted:
    """The proof's "a worker is idle" event as a ``should_split``: polled, not latched."""

    def __init__(self, name: str) -> None:
        self.event = Event(name) if name else None
        self.value = False
        self._next = 0.0

    def __call__(self) -> bool:
        if self.event is None:
            return False
        now = time.monotonic()
        if now >= self._next:
            self._next = now + WANTED_POLL
            self.value = bool(self.event.is_set())
        return self.value


def _worker_side() -> tuple[str, str]:
    host, worker = worker_identity()
    _allow_children()
    if "SHMPAMT_CORE_SLOT" not in os.environ:
        os.environ["SHMPAMT_CORE_SLOT"] = str(int(worker) if worker.isdigit() else 0)
    return host, worker


def prove_task(task: SubtreeTask, stop_event: str = "", wanted_event: str = "") -> dict[str, Any]:
    """One Dask task: one slice of one subtree, through the worker's kept session."""
    host, worker = _worker_side()
    out = run_subtree(task, _StopFlag(stop_event), _Wanted(wanted_event))
    out["where"] = f"{host}:{worker}"
    return out


def warm_task(task: SubtreeTask) -> float:
    """Start the worker's session for the proof's scenario while the first task runs
    elsewhere (a session costs seconds; each worker pays it once); its seconds."""
    _worker_side()
    t0 = time.monotonic()
    session_for(task.scenario, task.pin)
    return time.monotonic() - t0


# --- the client side ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProofProgress:
    name: str
    tasks_done: int
    outstanding: int
    running: int
    complete: int
    estimate: int | None
    seconds_left: float | None
    elapsed: float


@dataclass
class ProofRun:
    frontier: Frontier
    interrupted: bool = False
    resumed: bool = False
    workers: int = 0
    #: seconds this run took (the frontier's ``elapsed`` adds every run's)
    wall: float = 0.0


def run_proof(
    client: Client,
    frontier: Frontier,
    *,
    checkpoint: Path | None = None,
    on_progress: Callable[[ProofProgress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ProofRun:
    """Drive ``frontier`` to its end (or a stop) on ``client``'s cluster."""
    spec = frontier.spec
    run = ProofRun(frontier, workers=len(client.scheduler_info(n_workers=-1)["workers"]))
    opts = _task_options(client)
    token = new_token()
    stop_name = f"shmpamt-proof-stop-{token}"
    stop_event = Event(stop_name, client=client)
    wanted_name = f"shmpamt-proof-wanted-{token}"
    wanted_event = Event(wanted_name, client=client)
    wanted = False
    running: dict[Future[Any], Prefix] = {}
    done = as_completed([], loop=client.loop)
    t0 = time.monotonic()
    base = frontier.elapsed
    tasks = 0

    def submit(prefix: Prefix) -> None:
        nonlocal tasks
        tasks += 1
        fut = client.submit(
            prove_task,
            spec.task(prefix, frontier.findings),
            stop_name,
            wanted_name,
            key=f"shmpamt-proof-{token}-{_name(prefix) or 'root'}-{tasks}",
            retries=0,
            pure=False,
            # Shallower first: the big subtrees start early, the small ones fill the end.
            priority=-len(prefix),
            **opts,
        )
        running[fut] = prefix
        done.add(fut)

    def progress() -> None:
        frontier.elapsed = base + time.monotonic() - t0
        if on_progress is not None:
            est, left = frontier.estimate()
            on_progress(
                ProofProgress(
                    spec.name,
                    len(frontier.log),
                    len(frontier.outstanding),
                    len(running),
                    frontier.total("complete"),
                    est,
                    left,
                    frontier.elapsed,
                )
            )

    def save() -> None:
        frontier.elapsed = base + time.monotonic() - t0
        if checkpoint is not None:
            frontier.save(checkpoint)

    for p in list(frontier.outstanding):
        submit(p)
    # Every worker starts its session now, not when its first task comes (below the
    # proof's tasks in priority: a worker that took one of them starts it there).
    warm = [
        client.submit(
            warm_task,
            spec.task(()),
            key=f"shmpamt-proof-{token}-warm-{i}",
            pure=False,
            priority=-MAX_SUBTREE_DEPTH - 1,
            workers=[addr],
            allow_other_workers=False,
            **opts,
        )
        for i, addr in enumerate(client.scheduler_info(n_workers=-1)["workers"])
    ]
    stopping = False
    stop_deadline = 0.0
    try:
        while running:
            if not stopping and should_stop():
                stopping, run.interrupted = True, True
                stop_event.set()
                stop_deadline = time.monotonic() + STOP_GRACE
            if stopping and time.monotonic() > stop_deadline:
                break
            # A worker with nothing to do: the running tasks hand back work early.
            idle = not stopping and len(running) < run.workers
            if idle != wanted:
                wanted = idle
                wanted_event.set() if idle else wanted_event.clear()
            for fut in done.next_batch(block=False):
                prefix = running.pop(fut, None)
                if prefix is None:
                    continue
                if fut.status == "finished":
                    result = fut.result()
                    before = set(frontier.outstanding)
                    if frontier.apply(result, str(result.get("where", ""))) and not stopping:
                        for p in frontier.outstanding:
                            if p not in before:
                                submit(p)
                elif fut.status == "error":
                    exc = fut.exception()
                    reason = f"{type(exc).__name__}: {exc}"
                    if not frontier.fail(prefix, reason) and not stopping:
                        submit(prefix)
                save()
            progress()
            time.sleep(0.02)
    finally:
        leftover = [f for f in [*running, *warm] if not f.done()]
        if leftover:
            client.cancel(leftover, force=True)
        with contextlib.suppress(Exception):
            stop_event.clear()
        with contextlib.suppress(Exception):
            wanted_event.clear()
        save()
        run.wall = time.monotonic() - t0
    progress()
    return run


# --- how it would scale ------------------------------------------------------------------


def simulate(log: list[dict[str, Any]], workers: int, cost: float = 0.0) -> float:
    """Seconds the proof whose task ``log`` this is would take on ``workers`` workers:
    each task takes its measured seconds plus ``cost`` (dispatch, result, bookkeeping),
    starts when its parent has handed it back and a worker is free, shallowest first
    (as :func:`run_proof` asks Dask to). The tree is the log's: the splits a worker
    left idle would have asked for are not replayed, so the figure is a bound from above."""
    by_prefix = {tuple(e["prefix"]): e for e in log}
    if () not in by_prefix:
        raise ValueError("the log has no root task")
    free = [0.0] * workers
    ready: list[tuple[float, Prefix]] = [(0.0, ())]  # (handed back at, prefix)
    end = 0.0
    while ready:
        w = heapq.heappop(free)
        waiting = [r for r in ready if r[0] <= w]
        # A free worker takes the shallowest task already handed back, else the next one.
        at, p = min(waiting, key=lambda r: (len(r[1]), r[0])) if waiting else min(ready)
        ready.remove((at, p))
        e = by_prefix.get(p)
        finish = max(w, at) + cost + (float(e["seconds"]) if e else 0.0)
        heapq.heappush(free, finish)
        end = max(end, finish)
        ready += [(finish, tuple(c)) for c in (e["handed"] if e else [])]
    return end
