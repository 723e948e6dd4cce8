"""The explore controller: persistent CPU processes, one CPU running at a time.

Spawning processes costs far more than an execution, so a :class:`Session`
keeps its CPUs alive and only resets shared state between executions;
``explore``, ``replay`` and minimisation are all loops of
:meth:`Session.execute`. A CPU whose next step is ``spin_lock`` while
pamt_lock is held is parked but not runnable. A grant covers one step, or
more when the strategy is bound to choose the same CPU again (budgets), or
the CPUs make a random walk's decisions themselves (streams; both in
:mod:`shmpamt.explorer.board`): the strategy is then asked for those decisions
afterwards, exactly as it would have been one at a time.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Final

import posix_ipc

from shmpamt.config import ExploreConfig, ReplayConfig, Scenario
from shmpamt.engine.processes import Fleet
from shmpamt.engine.system import System, SystemConfig
from shmpamt.engine.workload import Workload
from shmpamt.errors import CpuCrashed, ModuleFailure, SchedulingError, UsageError
from shmpamt.explorer.board import (
    ATOMIC_OPS,
    CMD_ABORT,
    CMD_EXIT,
    CMD_GO,
    CMD_START,
    CPU_SETS,
    IDLE,
    OPS,
    PARKED,
    R_LOG,
    REC,
    RING_SLOTS,
    S_ALIVE,
    S_AT_LOCK,
    S_GEN,
    S_LEN,
    S_ON,
    S_STEPS,
    S_USED,
    SPIN_LOCK,
    SPIN_UNLOCK,
    STEP_REC,
    STREAM_ROOM,
    W_ARG,
    W_ARG_HI,
    W_CMD,
    W_OP,
    W_OPND_A,
    W_OPND_B,
    W_RAN,
    W_RUN_ON,
    W_STATE,
    W_TARGET,
    WORDS,
    ExploreBoard,
    join64,
    split64,
)
from shmpamt.explorer.cpu import cpu_explore_main
from shmpamt.explorer.footprint import CONDITIONAL, Footprints
from shmpamt.explorer.minimize import minimize
from shmpamt.machine.ipc import new_token
from shmpamt.machine.placement import core_for, pinned
from shmpamt.records.execution import (
    COMPLETE,
    DEADLOCK,
    SLEEP_BLOCKED,
    STEP_LIMIT,
    Execution,
    LazyTrace,
    TraceEvent,
)
from shmpamt.records.results import (
    EXPLORE,
    REPLAY,
    REPLAYED,
    ExploreStats,
    Finding,
    VariantResult,
    first_examples,
    zero_counts,
)
from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.base import Access, BaseScheduler, ScheduleMismatch, SleepBlocked
from shmpamt.schedulers.registry import claim_of, make_scheduler
from shmpamt.schedulers.replay import Replay
from shmpamt.variants.registry import load_variant

STEP_TIMEOUT: Final = 15.0  # a parked CPU that needs longer than this is dead or hung
BOOT_TIMEOUT: Final = 60.0
MINIMIZE_CHECKS: Final = 300  # replays per reported kind


class Session:
    """``with Session(Scenario("rfc")) as s: s.execute(scheduler)``.

    ``core``: run the controller, the CPUs and the daemon on this one core
    (:mod:`~shmpamt.machine.placement`); None leaves placement to the OS. ``batch``
    False: every step is a hand-off (for comparison; the executions are the same).
    """

    def __init__(self, scenario: Scenario, core: int | None = None, batch: bool = True) -> None:
        self.batch = batch
        self._pin = pinned(core)
        self._pin.__enter__()
        try:
            self._start(scenario)
        except BaseException:
            self._pin.__exit__(None, None, None)
            raise

    def _start(self, scenario: Scenario) -> None:
        variant = load_variant(scenario.variant)
        self.scenario = scenario
        self.variant_name = variant.name or scenario.variant
        self.max_steps = scenario.max_steps
        layout = SystemConfig(
            cpus=scenario.cpus,
            ranges=scenario.ranges,
            pages_per_range=scenario.pages,
            initial_refcount=variant.initial_refcount,
        )
        workload = Workload.for_explore(scenario)
        token = new_token()
        self.board = ExploreBoard.create(scenario.cpus, token)
        sched = self.board.names

        def args(s: System, c: int) -> tuple[object, ...]:
            return (s.names, sched, c, scenario.variant, workload, scenario.rounds)

        try:
            self.fleet = Fleet.start(
                layout, cpu_explore_main, args, token=token, extra_names=self.board.all_names()
            )
        except BaseException:
            self.board.close()
            raise
        self.s = self.fleet.system
        # Plain loads of the refcounts, for the parked steps' footprints: every CPU
        # is parked while the controller looks (the board's hand-off orders them).
        self._rc = self.s.refcounts.view()
        self.cpus = scenario.cpus
        self.footprints = Footprints(scenario.cpus)
        self.executions = 0
        #: steps granted by a hand-off, and steps a CPU took past where a search stopped
        self.handoffs = 0
        #: times the controller granted (in a stream the CPUs grant each other)
        self.wakeups = 0
        self.discarded = 0
        try:
            for _ in range(self.cpus):  # every CPU parks in its idle loop once attached
                self._wait(None, BOOT_TIMEOUT)
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------

    def _wait(self, cpu: int | None, timeout: float = STEP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.board.doorbell.acquire(0.2)
                return
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass  # SignalError: the runner's Ctrl-C/SIGTERM flag was set; keep going
            failure = self.fleet.cpu_failure()
            if failure is not None:
                raise CpuCrashed(failure)
            if not self.s.module.alive():
                raise ModuleFailure("the TDX module daemon died")
            if time.monotonic() > deadline:
                who = "a CPU" if cpu is None else f"cpu {cpu}"
                raise CpuCrashed(
                    f"{who} did not reach its next scheduling point in {timeout:.0f} s"
                )

    def _grant(self, cpu: int, cmd: int, arg: int = 0) -> None:
        b = self.board
        b.set(cpu, W_CMD, cmd)
        if cmd == CMD_START:
            lo, hi = split64(arg)
            b.set(cpu, W_ARG, lo)
            b.set(cpu, W_ARG_HI, hi)
        b.grants[cpu].release()
        self._wait(cpu)

    def _reset(self) -> None:
        s = self.s
        s.refcounts.fill(s.config.initial_refcount)
        s.lock.reset()
        s.pool.reset()
        s.module.reset(idle=True)  # every CPU is idle: no SEAMCALL is in flight
        s.log.reset()
        for c in range(self.cpus):
            self.board.set(c, W_STATE, IDLE)
        self.board.w[self.board.stream + S_ON] = 0

    def _abort_parked(self) -> None:
        # Invariant: between executions every CPU waits in its idle loop, so the
        # next START is answered from a clean slate (replays stay deterministic).
        for c in range(self.cpus):
            # (the state first: asking for an exit code is a system call)
            if self.board.get(c, W_STATE) == PARKED and self.fleet.procs[c].exitcode is None:
                self._grant(c, CMD_ABORT)

    # -- one execution ------------------------------------------------------------

    def execute(self, scheduler: BaseScheduler) -> Execution:
        """One execution; whatever happens, no CPU is left parked mid-execution."""
        self.executions += 1
        try:
            return self._run(scheduler)
        except BaseException:
            self._abort_parked()
            raise

    def _run(self, scheduler: BaseScheduler) -> Execution:
        seed = scheduler.workload_seed
        self._reset()
        b, log, lock = self.board, self.s.log, self.s.lock
        w = b.w
        cpus = range(self.cpus)
        bases = [c * WORDS for c in cpus]
        rings = [b.ring(c) for c in cpus]
        wants_pending = scheduler.uses_pending
        uniform_numbers = scheduler.uniform_numbers
        max_steps = self.max_steps
        ring_room = RING_SLOTS if self.batch else 1
        # A random walk's decisions are the CPUs' own from the first step (a stream).
        opening = None
        if ring_room > 1 and not wants_pending:
            opening = uniform_numbers(min(max_steps, STREAM_ROOM))
        if opening:
            self._start_streaming(seed, opening)
        else:
            for c in cpus:
                self._grant(c, CMD_START, seed)
        steps: list[int] = []
        runnable_after: list[bool] = []
        # each grant's CPU and step records; TraceEvents are built only when read
        runs: list[tuple[int, list[int]]] = []
        current: int | None = None
        seen = 0
        violations = []
        vsteps: list[int] = []
        outcome = COMPLETE
        in_state = self.footprints.pending
        rc = self._rc
        pending: dict[int, Access] | None = None
        next_cpu = scheduler.next_cpu
        lookahead = scheduler.lookahead
        follow = scheduler.follow
        doorbell, grants = b.doorbell, b.grants

        def took(
            got: list[tuple[int, list[int]]],
            made: list[int],
            decisions: list[tuple[Sequence[int], int]],
            after: list[bool],
            asked: int | None,
        ) -> None:
            """Steps taken on a promise or by the strategy's rule: ask the strategy
            for their decisions, made at once as they would have been one
            hand-off each (``asked``: the current CPU at the first of them)."""
            if decisions:
                kept = follow(decisions, asked)
                # Invariant: a strategy's promise, or its rule, holds for its decisions.
                if kept != len(decisions):
                    at = len(steps) + len(made) - len(decisions) + kept
                    raise _broken(scheduler, decisions[kept][1], at)
                runnable_after.extend(after)
            steps.extend(made)
            runs.extend(got)

        def logged(logs: list[int], first: int) -> None:
            """Attribute violations to steps: each logged up to the next one's start."""
            nonlocal seen
            if logs[-1] != seen:
                for j, total in enumerate(logs):
                    if total != seen:
                        new = log.records()[seen:total]
                        seen += len(new)
                        violations.extend(new)
                        vsteps.extend([first + j] * len(new))

        if opening:
            got, made, decisions, after, logs = self._end_stream(None, bases, rings)
            if made:
                took(got, made, decisions, after, None)
                logs[-1] = log.total()
                logged(logs, 0)
                current = steps[-1]
        while True:
            parked = [c for c in cpus if w[bases[c] + W_STATE] == PARKED]
            if not parked:
                if current is not None:
                    runnable_after.append(False)
                break
            # A CPU about to spin_lock a held lock cannot make progress: not runnable.
            runnable = [c for c in parked if w[bases[c] + W_OP] != SPIN_LOCK]
            if len(runnable) < len(parked) and not lock.is_held():
                runnable = parked
            if wants_pending:
                pending = {}
                for c in parked:
                    base = bases[c]
                    pending[c] = in_state(
                        w[base + W_OP], w[base + W_TARGET], c, rc,
                        w[base + W_OPND_A], w[base + W_OPND_B],
                    )  # fmt: skip
            if current is not None:
                runnable_after.append(current in runnable)
            if not runnable:
                outcome = DEADLOCK
                break
            if len(steps) >= max_steps:
                outcome = STEP_LIMIT
                break
            try:
                c = next_cpu(runnable, current, pending)
            except SleepBlocked:
                # Every schedule below this point repeats an explored class: stop here.
                outcome = SLEEP_BLOCKED
                break
            if c not in runnable:
                raise SchedulingError(f"scheduler chose cpu {c}, runnable were {runnable}")
            base = bases[c]
            op = w[base + W_OP]
            first = len(steps)
            room = min(ring_room, max_steps - first) - 1
            numbers = None
            if room > 0 and not wants_pending:
                numbers = uniform_numbers(min(room, STREAM_ROOM))
            if numbers:
                # The CPUs make the decisions after this one (a stream, see parking).
                self._run_stream(c, parked, runnable, numbers)
                got, made, decisions, after, logs = self._end_stream(c, bases, rings)
                took(got, made, decisions, after, c)
            else:
                # Steps c may take after this one without a hand-off: every one the
                # strategy is bound to give it anyway. `then` is who can run meanwhile.
                budget = 0
                then = runnable
                waiters = any(o != c and w[bases[o] + W_OP] == SPIN_LOCK for o in parked)
                if room > 0 and (op != SPIN_UNLOCK or not waiters):
                    if op == SPIN_LOCK and waiters:  # once c holds the lock, they cannot run
                        then = [o for o in parked if o == c or w[bases[o] + W_OP] != SPIN_LOCK]
                    budget = room if len(then) == 1 else lookahead(then, c, room)
                w[base + W_RUN_ON] = budget
                w[base + W_CMD] = CMD_GO
                self.handoffs += 1
                self.wakeups += 1
                grants[c].release()
                try:
                    doorbell.acquire(0)  # the CPU ran on this core and has parked again
                except posix_ipc.BusyError:
                    self._wait(c)
                ran = w[base + W_RAN]
                # Invariant: a CPU takes the granted step and at most `budget` more.
                if not 1 <= ran <= budget + 1:
                    raise SchedulingError(f"cpu {c} took {ran} steps on a budget of {budget}")
                ring = w[rings[c] : rings[c] + ran * REC].tolist()  # its step records
                logs = ring[R_LOG::REC]
                if not wants_pending:
                    # c ran on, so it was runnable after every step but the last
                    took([(c, ring)], [c] * ran, [(then, c)] * (ran - 1), [True] * (ran - 1), c)
                else:
                    done = self._follow_pending(
                        scheduler, then, c, ring, ran, pending, runnable_after, steps
                    )
                    pending = done.pending
                    runs.append((c, ring[: done.steps * REC]))
                    if done.stopped:
                        self.discarded += ran - done.steps
                        outcome = SLEEP_BLOCKED
                        del logs[done.steps :]
            # The last step's violations are those logged up to now.
            if outcome != SLEEP_BLOCKED:
                logs[-1] = log.total()
            logged(logs, first)
            if outcome == SLEEP_BLOCKED:
                # The CPU ran past where the search stops: what it did there never happened.
                seen = log.total()
                break
            current = steps[-1]
        if outcome == COMPLETE:
            self.s.check_quiescent()
        elif outcome == DEADLOCK:
            self.s.check_lock()
        self._abort_parked()
        scheduler.end_execution(outcome, pending)
        if log.total() != seen:  # logged after the last step (quiescence, the lock)
            new = log.records()[seen:]
            violations.extend(new)
            vsteps.extend([len(steps)] * len(new))
        return Execution(
            steps,
            LazyTrace(partial(_trace, runs)),
            violations,
            vsteps,
            outcome,
            seed,
            strategy=scheduler.finder,
            runnable_after=runnable_after,
        )

    def _open_stream(self, numbers: list[int]) -> None:
        """Hand the decisions to the CPUs: the stream's numbers, then S_ON."""
        w, s = self.board.w, self.board.stream
        self.board.numbers[: len(numbers)] = array("Q", numbers)
        w[s + S_GEN] += 1
        w[s + S_LEN] = len(numbers)
        w[s + S_USED] = 0
        w[s + S_STEPS] = 0
        w[s + S_ON] = 1
        self.wakeups += 1

    def _start_streaming(self, seed: int, numbers: list[int]) -> None:
        """Start an execution with the decisions the CPUs' from its first step:
        each CPU starts the next one at its first scheduling point, the last
        one decides (see parking)."""
        self._open_stream(numbers)
        w, s = self.board.w, self.board.stream
        w[s + S_ALIVE] = (1 << self.cpus) - 1  # each sets its bit at spin_lock when it parks
        w[s + S_AT_LOCK] = 0
        for c in range(self.cpus):
            self.board.set(c, W_CMD, CMD_START)
            lo, hi = split64(seed)
            self.board.set(c, W_ARG, lo)
            self.board.set(c, W_ARG_HI, hi)
        self.board.grants[0].release()

    def _run_stream(
        self, c: int, parked: list[int], runnable: list[int], numbers: list[int]
    ) -> None:
        """Grant ``c`` the step we decided, with a stream of ``numbers`` after it."""
        w, s = self.board.w, self.board.stream
        self._open_stream(numbers)
        alive = at_lock = 0
        for o in parked:
            alive |= 1 << o
            if w[o * WORDS + W_OP] == SPIN_LOCK:
                at_lock |= 1 << o
            w[o * WORDS + W_CMD] = CMD_GO  # any of them may be granted by another
        w[s + S_ALIVE] = alive
        w[s + S_AT_LOCK] = at_lock
        mask = 0
        for o in runnable:
            mask |= 1 << o
        log = self.board.step_log
        w[log] = c
        w[log + 1] = mask
        w[self.board.stream + S_STEPS] = 1
        self.board.grants[c].release()

    def _end_stream(self, c: int | None, bases: list[int], rings: list[int]) -> _StreamSteps:
        """Wait for the stream to end; what its steps were.

        ``c``: the CPU we granted its first step, or None (the CPUs made every
        decision). Returns the runs of steps (CPU, records), every step's CPU,
        the CPUs' decisions (runnable set, choice), whether each step's CPU
        could run at the next decision, and the violation total at the end of
        each step (the last one's is read by the caller).
        """
        w, s = self.board.w, self.board.stream
        try:
            self.board.doorbell.acquire(0)  # the stream ran on this core and has ended
        except posix_ipc.BusyError:
            self._wait(c)
        w[s + S_ON] = 0  # ordinary grants from here on
        n, used = w[s + S_STEPS], w[s + S_USED]
        ours = int(c is not None)
        # Invariant: every decision of the CPUs took one number or more.
        if not ours <= n <= used + ours:
            raise SchedulingError(f"a stream of {used} numbers logged {n} steps")
        first = self.board.step_log
        log = w[first : first + n * STEP_REC].tolist()
        who = log[0::STEP_REC]
        sets = [CPU_SETS[m] for m in log[1::STEP_REC]]
        taken = dict.fromkeys(who, 0)
        got: list[tuple[int, list[int]]] = []
        start = 0
        for k in range(1, n + 1):
            if k == n or who[k] != who[start]:
                o = who[start]
                r = rings[o] + taken[o] * REC
                taken[o] += k - start
                got.append((o, w[r : r + (k - start) * REC].tolist()))
                start = k
        for o, ran in taken.items():
            # Invariant: a CPU's ring holds exactly the steps the log gives it.
            if w[bases[o] + W_RAN] != ran:
                raise SchedulingError(
                    f"cpu {o} recorded {w[bases[o] + W_RAN]} steps, the stream gave it {ran}"
                )
        self.handoffs += len(got)
        decisions: list[tuple[Sequence[int], int]] = list(zip(sets[ours:], who[ours:], strict=True))
        after = [o in then for o, then in zip(who[:-1], sets[1:], strict=True)]
        return got, who, decisions, after, [*log[2 + STEP_REC :: STEP_REC], 0]

    def _follow_pending(
        self,
        scheduler: BaseScheduler,
        then: list[int],
        c: int,
        ring: list[int],
        ran: int,
        pending: dict[int, Access] | None,
        runnable_after: list[bool],
        steps: list[int],
    ) -> _Followed:
        """The decisions for a run, one at a time with ``pending`` as each would have
        seen it, and what each step did; stops where the strategy abandons."""
        assert pending is not None, "a strategy that reads pending was given none"
        w, in_state, effect = self.board.w, self.footprints.pending, self.footprints.effect
        written: dict[int, int] = {}  # refcount slots c's steps so far changed: value now
        # Other CPUs parked at a conditional atomic: c's writes can change their footprint.
        judged = [
            (o, w[o * WORDS + W_OP], w[o * WORDS + W_TARGET], w[o * WORDS + W_OPND_A],
             w[o * WORDS + W_OPND_B])
            for o in pending
            if o != c and w[o * WORDS + W_OP] in CONDITIONAL
        ]  # fmt: skip
        for j in range(ran):
            opj, tgt, opnd_a, opnd_b, before, after, _, _, _, _ = ring[j * REC : j * REC + REC]
            if j:
                # c ran on, so it was runnable after the step before.
                runnable_after.append(True)
                pending = dict(pending)
                pending[c] = in_state(opj, tgt, c, {tgt: before}, opnd_a, opnd_b)
                # A parked conditional atomic is judged in the state it is parked
                # in, which c may have changed since the grant.
                for o, op_o, target_o, a_o, b_o in judged:
                    if target_o in written:
                        pending[o] = in_state(op_o, target_o, o, written, a_o, b_o)
                try:
                    chosen = scheduler.next_cpu(then, c, pending)
                except SleepBlocked:
                    return _Followed(j, pending, stopped=True)
                # Invariant: a strategy's lookahead is a promise about its decisions.
                if chosen != c:
                    raise _broken(scheduler, c, len(steps))
            if opj in ATOMIC_OPS:
                written[tgt] = after
            scheduler.executed(effect(opj, tgt, c, before, after))
            steps.append(c)
        return _Followed(ran, pending, stopped=False)

    def replay(self, schedule: Schedule) -> Execution:
        sched = Replay(schedule, times=1)
        sched.new_execution()
        return self.execute(sched)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        for c in range(self.cpus):
            if self.fleet.procs[c].exitcode is None:
                self.board.set(c, W_CMD, CMD_EXIT)
                self.board.grants[c].release()
        deadline = time.monotonic() + 5
        for p in self.fleet.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        self._rc.release()  # the segment's mapping cannot close while a view is exported
        try:
            self.fleet.close()
            self.board.close()
        finally:
            self._pin.__exit__(None, None, None)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _trace(runs: list[tuple[int, list[int]]]) -> list[TraceEvent]:
    """The records each step left in its CPU's ring, as trace events."""
    trace: list[TraceEvent] = []
    for c, ring in runs:
        for r in range(0, len(ring), REC):
            opi, target, _, _, before, after, lo, hi, _, call = ring[r : r + REC]
            op = OPS[opi]
            result = join64(lo, hi)
            if opi in ATOMIC_OPS:
                if result >= 1 << 63:
                    result -= 1 << 64
                trace.append(TraceEvent(len(trace), c, op, target, before, after, result, "", call))
            else:
                trace.append(TraceEvent(len(trace), c, op, target, None, None, result, "", call))
    return trace


#: a stream's steps: runs (CPU, records), each step's CPU, the CPUs' decisions
#: (runnable set, choice), runnable after each step, violation total after each
_StreamSteps = tuple[
    list[tuple[int, list[int]]], list[int], list[tuple[Sequence[int], int]], list[bool], list[int]
]


def _broken(scheduler: BaseScheduler, cpu: int, step: int) -> SchedulingError:
    return SchedulingError(
        f"{scheduler.name} promised cpu {cpu} step {step}, then chose cpu {scheduler.steps[-1]}"
    )


@dataclass
class _Followed:
    """How replaying a run's decisions to a strategy that reads ``pending`` ended."""

    steps: int  # steps kept (the granted one and those the strategy confirmed)
    pending: dict[int, Access] | None  # as at the last decision
    stopped: bool  # the strategy abandoned the execution (SleepBlocked) there


# --- searching ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExploreProgress:
    executions: int
    distinct: int
    #: violation kinds found so far (not ignored)
    kinds: int
    elapsed: float
    budget: float


@dataclass
class _Kind:
    """The first execution that showed a kind, and how many executions showed it."""

    schedule: Schedule
    execution: Execution
    executions: int = 1
    reported: Schedule | None = None
    reported_execution: Execution | None = None


@dataclass
class _Search:
    kinds: dict[str, _Kind] = field(default_factory=dict)
    ignored_only: int = 0
    incidents: list[str] = field(default_factory=list)


def shrink(session: Session, schedule: Schedule, kind: str) -> tuple[Schedule, Execution]:
    """The smallest schedule found that still shows ``kind``, and its execution."""

    def still_fails(candidate: Schedule) -> bool:
        try:
            ex = session.replay(candidate)
        except SchedulingError:
            return False  # infeasible: a recorded CPU was not runnable
        return kind in ex.kinds

    small = minimize(schedule, still_fails, MINIMIZE_CHECKS)
    return small, session.replay(small)


def run_explore(
    config: ExploreConfig,
    on_progress: Callable[[ExploreProgress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    shard: tuple[int, int] = (0, 1),
    core: int | None = None,
) -> VariantResult:
    """One explorer: search until the budget, the executions, or the strategy is exhausted.

    Every violation kind found is kept with the first execution that showed it;
    with ``first`` (not the default) the search ends at the first failing one.
    ``shard`` is this explorer's part of a ``--jobs`` search, ``core`` its core.
    """
    scenario = config.scenario
    scheduler = make_scheduler(
        config.strategy,
        seed=config.seed,
        depth=config.depth,
        preemptions=config.preemptions,
        max_executions=config.executions,
        shard=shard,
    )
    found = _Search()
    ran = 0
    last_tick = 0.0
    budget = config.seconds
    with Session(scenario, core) as session:
        # The budget is search time: starting the processes does not count against it.
        t0 = time.monotonic()
        while not should_stop():
            elapsed = time.monotonic() - t0
            if budget and elapsed >= budget:
                break
            if not scheduler.new_execution():
                break
            ex = session.execute(scheduler)
            ran += 1
            if scheduler.skipped_last:
                continue  # another job owns this execution and counts what it shows
            if ex.outcome == STEP_LIMIT:
                found.incidents.append(
                    f"execution {ran} hit the step limit of {session.max_steps} steps (livelock?)"
                )
            failing = ex.kinds - config.ignore
            if ex.kinds and not failing:
                found.ignored_only += 1
            for kind in ex.kinds:
                if kind in found.kinds:
                    found.kinds[kind].executions += 1
                else:
                    sched = scenario.schedule(ex.workload_seed, tuple(ex.steps))
                    found.kinds[kind] = _Kind(sched, ex)
            if failing and config.first:
                break
            if on_progress is not None and elapsed - last_tick >= 0.2:
                last_tick = elapsed
                on_progress(
                    ExploreProgress(ran, _distinct(scheduler), _n(found, config), elapsed, budget)
                )
        for kind, k in found.kinds.items():
            if config.minimize and kind not in config.ignore:
                k.reported, k.reported_execution = shrink(session, k.schedule, kind)
        elapsed = time.monotonic() - t0
        if on_progress is not None:
            on_progress(
                ExploreProgress(ran, _distinct(scheduler), _n(found, config), elapsed, budget)
            )
        name = session.variant_name
    counts = zero_counts()
    examples = {}
    findings = []
    for kind, k in found.kinds.items():
        counts[kind] = k.executions
        ex = k.reported_execution or k.execution
        examples[kind] = next(v for v in k.execution.violations if v.name == kind)
        reported = k.reported or k.schedule
        findings.append(
            Finding(
                kind=kind,
                schedule=reported.encode(),
                found=k.schedule.encode(),
                steps=len(ex.steps),
                preemptions=ex.preemptions(),
                strategy=k.execution.strategy,
                executions=k.executions,
                execution=ex,
            )
        )
    ordered = sorted(findings, key=lambda f: (f.kind in config.ignore, f.kind))
    return VariantResult(
        variant=name,
        mode=EXPLORE,
        seed=config.seed,
        cpus=scenario.cpus,
        operations=ran,
        elapsed_s=elapsed,
        counts=counts,
        examples=examples,
        incidents=tuple(found.incidents),
        ignored=config.ignore,
        findings=tuple(ordered),
        coverage=scheduler.coverage(),
        spec=config.variant,
        shown=next((f.execution for f in ordered if f.kind not in config.ignore), None),
        explore=ExploreStats(
            strategy=config.strategy,
            executions=ran,
            distinct_schedules=_distinct(scheduler),
            steps_total=scheduler.total_steps,
            claim=claim_of(scheduler),
            ignored_only=found.ignored_only,
        ),
    )


def _n(found: _Search, config: ExploreConfig) -> int:
    return len(set(found.kinds) - config.ignore)


def _distinct(s: BaseScheduler) -> int:
    return s.distinct_schedules


def run_replay(
    config: ReplayConfig, should_stop: Callable[[], bool] = lambda: False
) -> VariantResult:
    """Replay a schedule ``times`` times; every replay must agree (else an incident)."""
    schedule = config.parsed
    incidents: list[str] = []
    t0 = time.monotonic()
    with Session(config.scenario, core_for(0) if config.pin else None) as s:
        runs: list[Execution] = []
        for _ in range(config.times):
            if should_stop():
                break
            try:
                runs.append(s.replay(schedule))
            except ScheduleMismatch as e:
                raise UsageError(f"schedule does not fit {schedule.variant}: {e}") from None
        outcomes = {(r.first_violation(), r.kinds) for r in runs}
        if len(outcomes) > 1:
            incidents.append(f"replays disagree: {sorted(map(str, outcomes))} (nondeterminism)")
        shown, ex = schedule, runs[-1] if runs else None
        if ex is not None and config.minimize and ex.failed:
            kind = ex.violations[0].name
            shown, ex = shrink(s, schedule, kind)
        name = s.variant_name
    counts = zero_counts()
    findings: list[Finding] = []
    examples = {}
    if ex is not None:
        for v in ex.violations:
            counts[v.name] += 1
        examples = first_examples(ex.violations)
        for kind in sorted(ex.kinds):
            findings.append(
                Finding(
                    kind=kind,
                    schedule=shown.encode(),
                    found=schedule.encode(),
                    steps=len(ex.steps),
                    preemptions=ex.preemptions(),
                    strategy="replay",
                    execution=ex,
                )
            )
    return VariantResult(
        variant=name,
        mode=REPLAY,
        seed=schedule.seed,
        cpus=schedule.cpus,
        operations=len(runs),
        elapsed_s=time.monotonic() - t0,
        counts=counts,
        examples=examples,
        incidents=tuple(incidents),
        findings=tuple(findings),
        coverage=f"replayed {len(runs)}x" + (f", {len(ex.steps)} steps" if ex else ""),
        explore=ExploreStats("replay", len(runs), 1, len(ex.steps) if ex else 0, REPLAYED),
        spec=schedule.variant,
        shown=ex,
        notes=tuple(n for n in (config.source_changed(),) if n),
    )
