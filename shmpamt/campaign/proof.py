"""A DPOR proof past one machine: subtrees as Dask tasks, a checkpointed frontier.

The proof of one variant in one scenario starts as one task, the whole tree
(prefix ``()``). A task explores its subtree for a slice
(:mod:`shmpamt.schedulers.subtree`) and reports the largest subtrees it
finished plus every alternative it did not take, which go back into the
:class:`Frontier` as new tasks, so the load spreads itself over however many
workers there are. While a worker is idle (fewer tasks than workers), the
running tasks are asked to end their slices early, at their next split point,
so the first task does not keep the others waiting. Every complete execution
is counted by exactly one finished subtree (:meth:`Frontier.apply` refuses a
subtree that overlaps a finished or outstanding one); the verdict is
"verified" only when nothing is outstanding and no task failed twice, else
"incomplete" with the reason.

Faults of the cluster: a worker lost mid-task makes Dask run the task again
elsewhere; a task that raised is submitted once more; a second failure gives
up on that subtree (the rest of the proof still runs, and its kinds are
reported), and the verdict is "incomplete". Ctrl-C stops the running tasks
(each keeps the subtrees it finished) and leaves the frontier on disk.

The frontier is checkpointed at most once a second and at the end, through
:mod:`shmpamt.records.publish` (a new temp file, then a rename), as
``<db>/proofs/<variant>-<cpus>x<rounds>x<ranges>-s<seed>-<hash>.json`` with a
checksum; a run with ``resume`` continues from it, after reading it the way the
failure database reads its entries (no link followed, bounded size, every
field checked). The tree of subtrees is fixed by the scenario and the split
depth, and where slices end changes only how it is cut into tasks: a resumed,
retried or interrupted proof ends with the same count as one that ran
straight through, on any number of workers.

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
import stat
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
from shmpamt.config import Scenario, check_bool, check_int
from shmpamt.errors import UsageError
from shmpamt.explorer.footprint import dependence_reductions
from shmpamt.explorer.session import StartAborted
from shmpamt.explorer.subtree import SubtreeTask, run_subtree, session_for
from shmpamt.machine.ipc import new_token
from shmpamt.records.publish import check_target, reason, write_file
from shmpamt.schedulers.dpor import HALT_RULE, MAX_SUBTREE_DEPTH

#: executions a task runs before it hands back the children it has not finished
DEFAULT_SLICE: Final = 400
#: attempts of one subtree before the proof gives up on it
MAX_ATTEMPTS: Final = 2
#: split states per path of a proof's tree of subtrees (see :mod:`shmpamt.schedulers.subtree`)
DEFAULT_DEPTH: Final = 12
#: what the checkpoint's format is (a file of another format is not resumed)
FORMAT: Final = 2
#: the largest checkpoint read back (a larger file is not one this code wrote)
MAX_CHECKPOINT_BYTES: Final = 256 << 20
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: seconds a stopped proof waits for its running tasks to end
STOP_GRACE: Final = 30.0
#: seconds between two writes of the checkpoint while a proof runs
SAVE_EVERY: Final = 1.0
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
    #: DPOR's symmetry over interchangeable CPUs, as for explore (on by default)
    symmetry: bool = True
    #: each execution's search ends at its first violation, as for explore (off)
    halt_at_violation: bool = False

    def __post_init__(self) -> None:
        check_int("slice", self.slice, 1, 10_000_000)
        check_int("split_depth", self.depth, 0, MAX_SUBTREE_DEPTH)
        check_bool("symmetry", self.symmetry)
        check_bool("halt_at_violation", self.halt_at_violation)
        self.scenario  # noqa: B018  (validates the variant, cpus, rounds and ranges)

    @property
    def scenario(self) -> Scenario:
        return Scenario(self.variant, self.cpus, self.rounds, self.ranges)

    @property
    def name(self) -> str:
        return f"{self.variant} {self.cpus}x{self.rounds}x{self.ranges} seed {self.seed}"

    @property
    def reductions(self) -> tuple[str, ...]:
        """What a verified proof rests on besides the search itself (its claim names them)."""
        sym = ("symmetry over interchangeable CPUs",) if self.symmetry else ()
        halt = (HALT_RULE,) if self.halt_at_violation else ()
        return sym + halt + dependence_reductions(self.ranges)

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
                self.symmetry,
                # (appended only when on: the keys of existing proofs stay as they were)
                *(["halt"] if self.halt_at_violation else []),
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
            symmetry=self.symmetry,
            halt_at_violation=self.halt_at_violation,
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
            "symmetry": self.symmetry,
            # (only when on: checkpoints written before the option still match)
            **({"halt_at_violation": True} if self.halt_at_violation else {}),
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
    #: read back from a checkpoint (this run continues an interrupted one)
    resumed: bool = field(default=False, compare=False)
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
        """Write the checkpoint whole (records/publish.py: a new temp file made with
        O_EXCL, flushed, renamed over the old one; a link there is refused)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body = self.to_dict()
        body["checksum"] = _checksum(body)
        write_file(path, json.dumps(body).encode())

    @classmethod
    def load(cls, path: Path, spec: ProofSpec) -> Frontier:
        """The checkpoint at ``path`` for ``spec``; UsageError (one line) if it is not a
        regular file, too large, not JSON, of another format or proof, or damaged."""
        raw = read_checkpoint(path)
        try:
            data = json.loads(raw)
        except RecursionError:
            raise UsageError(f"the checkpoint {path} is nested too deeply; remove it") from None
        except ValueError as e:
            why = str(e)[:80]
            raise UsageError(
                f"the checkpoint {path} is not valid JSON ({why}); remove it"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UsageError(f"the checkpoint {path} is of another format; remove it")
        if data.get("spec") != spec.to_dict():
            raise UsageError(f"the checkpoint {path} is of another proof: {data.get('spec')}")
        body = {k: v for k, v in data.items() if k != "checksum"}
        if data.get("checksum") != _checksum(body):
            # Invariant: a checkpoint is resumed only as it was written (an edit or a
            # damaged block could make a proof "verified" with a wrong count).
            raise UsageError(f"the checkpoint {path} does not match its checksum; remove it")
        try:
            return _from_checkpoint(spec, data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"the checkpoint {path} is damaged ({e}); remove it") from None


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _ints(v: object, what: str) -> Prefix:
    if not isinstance(v, list) or not all(type(x) is int and x >= 0 for x in v):
        raise ValueError(f"{what} is not a list of positions")
    if len(v) > MAX_SUBTREE_DEPTH:
        raise ValueError(f"{what} is deeper than {MAX_SUBTREE_DEPTH}")
    return tuple(v)


def _dict(v: object, what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ValueError(f"{what} is not an object")
    return v


def _count(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"{what} is not a count")
    return v


def _from_checkpoint(spec: ProofSpec, data: dict[str, Any]) -> Frontier:
    """A frontier from a checkpoint's fields, each checked for its type; the finished
    and outstanding subtrees must not overlap (ValueError or AssertionError)."""
    outstanding = [_ints(p, "an outstanding subtree") for p in data["outstanding"]]
    parts: dict[str, dict[str, Any]] = {}
    for name, part in _dict(data["parts"], "parts").items():
        _ints([int(x) for x in name.split(".")] if name else [], f"part {name!r}")
        part = _dict(part, f"part {name!r}")
        for key in ("executions", "complete", "sleep_blocked", "deadlocks", "steps"):
            _count(part.get(key, 0), f"{key} of part {name!r}")
        for k, n in _dict(part.get("kinds", {}), f"kinds of part {name!r}").items():
            _count(n, f"kind {k!r} of part {name!r}")
        parts[name] = part
    failures = {k: [str(r) for r in v] for k, v in _dict(data["failures"], "failures").items()}
    given_up = {k: str(v) for k, v in _dict(data["given_up"], "given_up").items()}
    findings = _dict(data["findings"], "findings")
    for kind, f in findings.items():
        f = _dict(f, f"finding {kind!r}")
        if not all(isinstance(f.get(k), str) for k in ("kind", "schedule", "found")):
            raise ValueError(f"finding {kind!r} is damaged")
        _count(f.get("steps"), f"steps of finding {kind!r}")
    log = data["log"]
    if not isinstance(log, list) or not all(isinstance(e, dict) for e in log):
        raise ValueError("the task log is not a list of objects")
    elapsed = float(data["elapsed"])
    if not elapsed >= 0:
        raise ValueError("elapsed is not a number of seconds")
    frontier = Frontier(
        spec,
        outstanding=outstanding,
        parts=parts,
        failures=failures,
        given_up=given_up,
        findings=dict(findings),
        log=list(log),
        elapsed=elapsed,
        executions_run=_count(data["executions_run"], "executions_run"),
    )
    for name in parts:
        path = _path(name)
        # Invariant: no finished subtree overlaps another or an outstanding one.
        above = any(_name(path[:d]) in parts for d in range(len(path)))
        if above or name in frontier._inner:
            raise ValueError(f"part {name!r} overlaps another")
        if any(o[: len(path)] == path or path[: len(o)] == o for o in outstanding):
            raise ValueError(f"part {name!r} overlaps an outstanding subtree")
    return frontier


def read_checkpoint(path: Path) -> bytes:
    """The bytes of the checkpoint at ``path``: a regular file (never a link followed, a
    FIFO or device opened) of at most MAX_CHECKPOINT_BYTES; UsageError otherwise."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise UsageError(f"the checkpoint {path} is {what}; remove it")
        fd = os.open(path, _READ_FLAGS)
    except OSError as e:
        raise UsageError(f"cannot read the checkpoint {path}: {reason(e)}") from None
    try:
        st = os.fstat(fd)
        # Invariant: only a regular file of bounded size is read (it may have been
        # swapped for something else since the lstat above).
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"the checkpoint {path} is not a regular file; remove it")
        if st.st_size > MAX_CHECKPOINT_BYTES:
            raise UsageError(
                f"the checkpoint {path} is larger than {MAX_CHECKPOINT_BYTES} bytes; remove it"
            )
        chunks = []
        left = MAX_CHECKPOINT_BYTES + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
    except OSError as e:
        raise UsageError(f"cannot read the checkpoint {path}: {reason(e)}") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_CHECKPOINT_BYTES:
        raise UsageError(
            f"the checkpoint {path} is larger than {MAX_CHECKPOINT_BYTES} bytes; remove it"
        )
    return raw


def check_checkpoint_target(path: Path) -> None:
    """Refuse, before a proof runs, a checkpoint name that is not a regular file (a
    link, a folder): UsageError. The rename would replace a link, never its target, but
    a planted name says something is wrong."""
    try:
        check_target(str(path))
    except OSError as e:
        raise UsageError(f"the checkpoint {path}: {reason(e)}") from None


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


def warm_task(task: SubtreeTask, stop_event: str = "") -> float:
    """Start the worker's session for the proof's scenario while the first task runs
    elsewhere (a session costs seconds; each worker pays it once); its seconds."""
    _worker_side()
    t0 = time.monotonic()
    with contextlib.suppress(StartAborted):
        session_for(task.scenario, task.pin, _StopFlag(stop_event))
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

    last_save = 0.0

    def save(now: bool = False) -> None:
        nonlocal last_save
        frontier.elapsed = base + time.monotonic() - t0
        # At most one write a SAVE_EVERY (the file holds the whole task log), and always
        # the last: a crash loses at most that much work, never the proof's consistency.
        if checkpoint is not None and (now or time.monotonic() - last_save >= SAVE_EVERY):
            frontier.save(checkpoint)
            last_save = time.monotonic()

    for p in list(frontier.outstanding):
        submit(p)
    # Every worker starts its session now, not when its first task comes (below the
    # proof's tasks in priority: a worker that took one of them starts it there).
    warm = [
        client.submit(
            warm_task,
            spec.task(()),
            stop_name,
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
        save(now=True)
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
    # A task stopped by Ctrl-C handed itself back; the run that resumed it has its own entry.
    by_prefix = {tuple(e["prefix"]): e for e in log if e["prefix"] not in e["handed"]}
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
