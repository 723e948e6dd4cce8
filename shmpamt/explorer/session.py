"""The explore controller: persistent CPU processes, one CPU running at a time.

Spawning processes costs far more than an execution, so a :class:`Session`
keeps its CPUs alive and only resets shared state between executions;
``explore``, ``replay`` and minimisation are all loops of
:meth:`Session.execute`. A CPU whose next step is ``spin_lock`` while
pamt_lock is held is parked but not runnable. A grant covers one step, or
more when the strategy is bound to choose the same CPU again (a run-on), or
the CPUs make a random walk's decisions themselves (streams; both in
:mod:`shmpamt.explorer.board`): the strategy is then asked for those decisions
afterwards, exactly as it would have been one at a time.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Final

import posix_ipc

from shmpamt.config import Scenario
from shmpamt.engine.processes import Fleet
from shmpamt.engine.system import System, SystemConfig
from shmpamt.engine.workload import Workload
from shmpamt.errors import CpuCrashed, ModuleFailure, SchedulingError
from shmpamt.explorer.board import (
    ATOMIC_OPS,
    CMD_ABORT,
    CMD_EXIT,
    CMD_GO,
    CMD_START,
    CPU_SETS,
    FAULT_KIND,
    FAULT_SLOTS,
    IDLE,
    OPS,
    PARKED,
    R_FAULT,
    R_LO,
    R_LOG,
    REC,
    RING_SLOTS,
    S_ALIVE,
    S_AT_LOCK,
    S_GEN,
    S_LEN,
    S_ON,
    S_SCRIPT,
    S_STEPS,
    S_USED,
    SPIN_LOCK,
    SPIN_UNLOCK,
    STEP_REC,
    STREAM_ROOM,
    W_ARG,
    W_ARG_HI,
    W_CMD,
    W_FAULT_N,
    W_FAULTS,
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
from shmpamt.machine.ipc import new_token
from shmpamt.machine.placement import pinned
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.records.execution import (
    COMPLETE,
    DEADLOCK,
    SLEEP_BLOCKED,
    STEP_LIMIT,
    Execution,
    LazyTrace,
    TraceEvent,
)
from shmpamt.records.schedule_string import FAULT_KINDS, INJECTED_NOTE, Schedule
from shmpamt.records.violations import Violation
from shmpamt.schedulers.base import Access, Scheduler, SleepBlocked
from shmpamt.schedulers.replay import Replay
from shmpamt.variants.registry import load_variant

#: "0" turns scripted streams off (every replayed prefix step through the controller),
#: for comparison: the executions are the same
SCRIPTS_ENV: Final = "SHMPAMT_SCRIPTED_STREAMS"
STEP_TIMEOUT: Final = 15.0  # a parked CPU that needs longer than this is dead or hung
BOOT_TIMEOUT: Final = 60.0
#: what the boot wait looks at between slices (None: nothing, every other wait)
StopCheck = Callable[[], bool] | None


class StartAborted(Exception):
    """The session was told to stop before its CPUs were up; it left nothing behind."""


class Session:
    """``with Session(Scenario("rfc")) as s: s.execute(scheduler)``.

    ``core``: run the controller, the CPUs and the daemon on this one core
    (:mod:`~shmpamt.machine.placement`); None leaves placement to the OS. ``batch``
    False: every step is a hand-off (for comparison; the executions are the same).
    ``scripts`` False: decisions a strategy has fixed in advance (DPOR's replayed
    prefix) are granted by the controller one CPU switch at a time instead of as a
    scripted stream (None: ``$SHMPAMT_SCRIPTED_STREAMS``, on unless it says 0).
    """

    def __init__(
        self,
        scenario: Scenario,
        core: int | None = None,
        batch: bool = True,
        should_stop: Callable[[], bool] = lambda: False,
        scripts: bool | None = None,
    ) -> None:
        """``should_stop`` (a Ctrl-C) is looked at while the processes start: once it
        holds, the start is given up (:class:`StartAborted`) with nothing left behind."""
        self.batch = batch
        if scripts is None:
            scripts = os.environ.get(SCRIPTS_ENV, "1").strip() != "0"
        self.scripts = batch and scripts
        self._pin = pinned(core)
        self._pin.__enter__()
        try:
            self._start(scenario, should_stop)
        except BaseException:
            self._pin.__exit__(None, None, None)
            raise

    def _start(self, scenario: Scenario, should_stop: Callable[[], bool]) -> None:
        if should_stop():
            raise StartAborted("stopped before the processes were started")
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
                layout,
                cpu_explore_main,
                args,
                token=token,
                extra_names=self.board.all_names(),
                should_stop=should_stop,
            )
        except BaseException:
            self.board.close()
            raise
        self.s = self.fleet.system
        # Plain loads of the refcounts, for the parked steps' footprints: every CPU
        # is parked while the controller looks (the board's hand-off orders them).
        self._rc = self.s.refcounts.view()
        self.cpus = scenario.cpus
        self._bases = [c * WORDS for c in range(self.cpus)]
        self._rings = [self.board.ring(c) for c in range(self.cpus)]
        self.footprints = Footprints(scenario.cpus, ranges=scenario.ranges)
        #: some execution was decided with the footprints: a claim names their reductions
        self.used_footprints = False
        self.executions = 0
        #: steps granted by a hand-off, and steps a CPU took past where a search stopped
        self.handoffs = 0
        #: times the controller granted (in a stream the CPUs grant each other)
        self.wakeups = 0
        self.discarded = 0
        #: kinds a strategy that halts at the first violation runs past (``--ignore``)
        self.halt_ignores: frozenset[str] = frozenset()
        try:
            if len(self.fleet.procs) < self.cpus:
                raise StartAborted("stopped while the CPUs were being started")
            for _ in range(self.cpus):  # every CPU parks in its idle loop once attached
                self._wait(None, BOOT_TIMEOUT, should_stop)
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------------------

    def _wait(
        self, cpu: int | None, timeout: float = STEP_TIMEOUT, should_stop: StopCheck = None
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.board.doorbell.acquire(0.2)
                return
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                pass  # SignalError: the runner's Ctrl-C/SIGTERM flag was set; keep going
            if should_stop is not None and should_stop():
                raise StartAborted("stopped while the CPUs were starting up")
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

    def execute(self, scheduler: Scheduler) -> Execution:
        """One execution; whatever happens, no CPU is left parked mid-execution."""
        self.executions += 1
        try:
            return self._run(scheduler)
        except BaseException:
            self._abort_parked()
            raise

    def _run(self, scheduler: Scheduler) -> Execution:
        seed = scheduler.workload_seed
        self._reset()
        injecting = self._plan_faults(scheduler.board_faults())
        run = _Run(scheduler, self.s.log)
        w, lock = self.board.w, self.s.lock
        cpus = range(self.cpus)
        bases = self._bases
        wants_pending = scheduler.uses_pending
        max_steps = self.max_steps
        ring_room = RING_SLOTS if self.batch else 1
        in_state, rc = self.footprints.pending, self._rc
        next_cpu = scheduler.next_cpu
        scripts = self.scripts
        halts = scheduler.halts
        if not self._open(run, seed, ring_room > 1 and not wants_pending):
            for c in cpus:
                self._grant(c, CMD_START, seed)
        while True:
            parked = [c for c in cpus if w[bases[c] + W_STATE] == PARKED]
            if not parked:
                if run.current is not None:
                    run.runnable_after.append(False)
                break
            # A CPU about to spin_lock a held lock cannot make progress: not runnable.
            runnable = [c for c in parked if w[bases[c] + W_OP] != SPIN_LOCK]
            if len(runnable) < len(parked) and not lock.is_held():
                runnable = parked
            if wants_pending:
                pending: dict[int, Access] = {}
                for c in parked:
                    base = bases[c]
                    pending[c] = in_state(
                        w[base + W_OP], w[base + W_TARGET], c, rc,
                        w[base + W_OPND_A], w[base + W_OPND_B],
                    )  # fmt: skip
                run.pending = pending
            if run.current is not None:
                run.runnable_after.append(run.current in runnable)
            if not runnable:
                run.outcome = DEADLOCK
                break
            if len(run.steps) >= max_steps:
                run.outcome = STEP_LIMIT
                break
            try:
                c = next_cpu(runnable, run.current, run.pending)
            except SleepBlocked:
                # Every schedule below this point repeats an explored class: stop here.
                run.outcome = SLEEP_BLOCKED
                break
            if c not in runnable:
                raise SchedulingError(f"scheduler chose cpu {c}, runnable were {runnable}")
            first = len(run.steps)
            room = min(ring_room, max_steps - first) - 1
            numbers = script = None
            if room > 0 and not wants_pending:
                numbers = scheduler.uniform_numbers(min(room, STREAM_ROOM))
            elif room > 0 and scripts:
                script = scheduler.scripted_choices(min(room, STREAM_ROOM))
            if numbers:
                logs = self._grant_stream(run, c, parked, runnable, numbers)
            elif script:
                logs = self._grant_script(run, c, parked, runnable, script)
            else:
                logs = self._grant_run_on(run, c, parked, runnable, room)
            # The last step's violations are those logged up to now.
            if run.outcome != SLEEP_BLOCKED:
                logs[-1] = run.log.total()
            run.logged(logs, first)
            if halts and run.vsteps:
                self._tell_first(scheduler, run)
            if run.outcome == SLEEP_BLOCKED:
                # The CPU ran past where the search stops: what it did there never happened.
                run.seen = run.log.total()
                break
            run.current = run.steps[-1]
        return self._close_execution(run, seed, injecting)

    def _plan_faults(self, plan: dict[int, list[tuple[int, int]]]) -> bool:
        """Tell each CPU the faults to inject in the execution about to start (the
        board's W_FAULTS, read at CMD_START); whether there are any."""
        b = self.board
        for c in range(self.cpus):
            mine = plan.get(c, ())
            # Invariant: a plan fits the board (schedulers.faults.MAX_FAULTS per CPU).
            if len(mine) > FAULT_SLOTS:
                raise SchedulingError(f"cpu {c}: {len(mine)} injections, room for {FAULT_SLOTS}")
            b.set(c, W_FAULT_N, len(mine))
            for i, (point, mask) in enumerate(mine):
                b.set(c, W_FAULTS + 2 * i, point)
                b.set(c, W_FAULTS + 2 * i + 1, mask)
        return bool(plan)

    def _open(self, run: _Run, seed: int, may_stream: bool) -> bool:
        """Start the execution as a stream when the strategy's first decisions are the
        uniform rule (a random walk's are, from the first step); False: not started."""
        if not may_stream:
            return False
        opening = run.scheduler.uniform_numbers(min(self.max_steps, STREAM_ROOM))
        if not opening:
            return False
        self._start_streaming(seed, opening)
        got, made, decisions, after, logs = self._end_stream(None, self._bases, self._rings)
        if made:
            run.took(got, made, decisions, after, None)
            logs[-1] = run.log.total()
            run.logged(logs, 0)
            run.current = run.steps[-1]
        return True

    def _grant_stream(
        self, run: _Run, c: int, parked: list[int], runnable: list[int], numbers: list[int]
    ) -> list[int]:
        """Grant ``c`` its step; the CPUs make the decisions after it (a stream, see
        :mod:`~shmpamt.explorer.board`). Returns the violation total after each step."""
        self._run_stream(c, parked, runnable, numbers)
        got, made, decisions, after, logs = self._end_stream(c, self._bases, self._rings)
        run.took(got, made, decisions, after, c)
        return logs

    def _grant_script(
        self, run: _Run, c: int, parked: list[int], runnable: list[int], script: list[int]
    ) -> list[int]:
        """Grant ``c`` its step and the steps the strategy has already fixed after it
        (``script``: their CPUs) as a scripted stream: the CPUs grant each other. Then
        ask the strategy for each of those decisions with the footprints it would
        have seen one hand-off at a time. Returns the violation total after each step."""
        w, bases = self.board.w, self._bases
        # Where every parked CPU is, and the refcounts, before the stream moves them.
        parked_at = {
            o: (w[bases[o] + W_OP], w[bases[o] + W_TARGET], w[bases[o] + W_OPND_A],
                w[bases[o] + W_OPND_B])
            for o in parked
        }  # fmt: skip
        values = self._rc.tolist()
        self._run_stream(c, parked, runnable, script, scripted=True)
        got, made, decisions, after, logs = self._end_stream(c, bases, self._rings)
        self._follow_script(run.scheduler, run.pending, parked_at, values, got, made, decisions)
        run.runnable_after.extend(after)
        run.steps.extend(made)
        run.runs.extend(got)
        return logs

    def _follow_script(
        self,
        scheduler: Scheduler,
        pending: dict[int, Access] | None,
        parked_at: dict[int, tuple[int, int, int, int]],
        values: list[int],
        got: list[tuple[int, list[int]]],
        made: list[int],
        decisions: list[tuple[Sequence[int], int]],
    ) -> None:
        """A scripted stream's decisions after its first, one at a time, each with
        ``pending`` as it would have seen it: every parked CPU's next step (the next
        record in its ring, else where it is parked now) judged on the refcounts at
        that point, which the steps' records give."""
        assert pending is not None, "a strategy that reads pending was given none"
        w, bases = self.board.w, self._bases
        in_state, effect = self.footprints.pending, self.footprints.effect
        pending = dict(pending)
        # each CPU's records in the stream, in order; then its position at the end
        records: dict[int, list[list[int]]] = {o: [] for o in parked_at}
        for o, ring in got:
            mine = records[o]
            for r in range(0, len(ring), REC):
                mine.append(ring[r : r + REC])
        taken = dict.fromkeys(records, 0)
        # the step each parked CPU takes next (op, target, a, b)
        nxt = dict(parked_at)
        for k, c in enumerate(made):
            if k:
                runnable, want = decisions[k - 1]
                chosen = scheduler.next_cpu(runnable, made[k - 1], pending)
                # Invariant: a script is a promise about the strategy's decisions.
                if chosen != want:
                    raise _broken(scheduler, want, len(scheduler.steps) - 1)
            opj, tgt, _, _, before, after = records[c][taken[c]][:R_LO]
            taken[c] += 1
            scheduler.executed(effect(opj, tgt, c, before, after))
            if k == len(made) - 1:
                break
            mine = records[c]
            if taken[c] < len(mine):
                nxt[c] = (mine[taken[c]][0], mine[taken[c]][1], mine[taken[c]][2],
                          mine[taken[c]][3])  # fmt: skip
            elif w[bases[c] + W_STATE] == PARKED:
                base = bases[c]
                nxt[c] = (w[base + W_OP], w[base + W_TARGET], w[base + W_OPND_A],
                          w[base + W_OPND_B])  # fmt: skip
            else:
                del nxt[c]  # c finished
                pending.pop(c, None)
            if opj in ATOMIC_OPS:
                values[tgt] = after
                # A parked conditional atomic is judged in the state it is parked in.
                for o, (op_o, target_o, a_o, b_o) in nxt.items():
                    if o != c and target_o == tgt and op_o in CONDITIONAL:
                        pending[o] = in_state(op_o, target_o, o, values, a_o, b_o)
            if c in nxt:
                op_c, target_c, a_c, b_c = nxt[c]
                pending[c] = in_state(op_c, target_c, c, values, a_c, b_c)

    def _halts_on(self, violations: Sequence[Violation]) -> bool:
        """Whether these violations end the search of a strategy that halts: any of a
        kind not in ``halt_ignores``."""
        return any(v.name not in self.halt_ignores for v in violations)

    def _tell_first(self, scheduler: Scheduler, run: _Run) -> None:
        """Tell a strategy that halts where the first violation it halts at was."""
        for v, step in zip(run.violations, run.vsteps, strict=True):
            if v.name not in self.halt_ignores:
                scheduler.violated(step)
                return

    def _grant_run_on(
        self, run: _Run, c: int, parked: list[int], runnable: list[int], room: int
    ) -> list[int]:
        """Grant ``c`` its step and the steps after it that the strategy is bound to give
        it anyway (its run-on); one hand-off. Returns the violation total after each
        step taken; a strategy that abandons the execution midway sets SLEEP_BLOCKED."""
        w, bases, scheduler = self.board.w, self._bases, run.scheduler
        base = bases[c]
        op = w[base + W_OP]
        # `then` is who can run while c runs on.
        run_on = 0
        then = runnable
        waiters = any(o != c and w[bases[o] + W_OP] == SPIN_LOCK for o in parked)
        if room > 0 and (op != SPIN_UNLOCK or not waiters):
            if op == SPIN_LOCK and waiters:  # once c holds the lock, they cannot run
                then = [o for o in parked if o == c or w[bases[o] + W_OP] != SPIN_LOCK]
            run_on = room if len(then) == 1 else scheduler.lookahead(then, c, room)
        w[base + W_RUN_ON] = run_on
        w[base + W_CMD] = CMD_GO
        self.handoffs += 1
        self.wakeups += 1
        self.board.grants[c].release()
        try:
            self.board.doorbell.acquire(0)  # the CPU ran on this core and has parked again
        except posix_ipc.BusyError:
            self._wait(c)
        ran = w[base + W_RAN]
        # Invariant: a CPU takes the granted step and at most `run_on` more.
        if not 1 <= ran <= run_on + 1:
            raise SchedulingError(f"cpu {c} took {ran} steps on a run-on of {run_on}")
        ring = w[self._rings[c] : self._rings[c] + ran * REC].tolist()  # its step records
        logs: list[int] = ring[R_LOG::REC]
        if not scheduler.uses_pending:
            # c ran on, so it was runnable after every step but the last
            run.took([(c, ring)], [c] * ran, [(then, c)] * (ran - 1), [True] * (ran - 1), c)
            return logs
        done = self._follow_pending(
            scheduler, then, c, ring, ran, run.pending, run.runnable_after, run.steps,
            run.seen if scheduler.halts and not self._halts_on(run.violations) else None,
        )  # fmt: skip
        run.pending = done.pending
        run.runs.append((c, ring[: done.steps * REC]))
        if done.stopped:
            self.discarded += ran - done.steps
            run.outcome = SLEEP_BLOCKED
            del logs[done.steps :]
        return logs

    def _close_execution(self, run: _Run, seed: int, injecting: bool = False) -> Execution:
        """Judge the end state, tell the strategy how the execution ended, and build it."""
        faults: tuple[tuple[int, int, int], ...] = ()
        if injecting or run.scheduler.wants_fault_points:
            points, faults, at = _fault_points(run.runs, self.cpus)
            if run.scheduler.wants_fault_points:
                run.scheduler.saw_faults(points)
                run.scheduler.saw_fault_steps(at)
        self.used_footprints |= run.scheduler.uses_pending
        # Invariant: the footprints' pool reduction holds only while every alloc is
        # served from its CPU's own partition (explorer/footprint.py).
        if run.scheduler.uses_pending and self.footprints.pool_commutes and self.s.pool.strayed:
            raise SchedulingError(
                f"{self.s.pool.strayed} page allocation(s) found their CPU's pool partition "
                "empty: the search's rule that allocations and frees commute does not hold "
                "for this scenario, so it cannot give a proof"
            )
        if run.outcome == COMPLETE:
            self.s.check_quiescent()
        elif run.outcome == DEADLOCK:
            self.s.check_lock()
        self._abort_parked()
        run.scheduler.end_execution(run.outcome, run.pending)
        log = run.log
        if log.total() != run.seen:  # logged after the last step (quiescence, the lock)
            new = log.records()[run.seen :]
            run.violations.extend(new)
            run.vsteps.extend([len(run.steps)] * len(new))
        return Execution(
            run.steps,
            LazyTrace(partial(_trace, run.runs)),
            run.violations,
            run.vsteps,
            run.outcome,
            seed,
            strategy=run.scheduler.finder,
            runnable_after=run.runnable_after,
            faults=faults,
        )

    def _open_stream(self, numbers: list[int], scripted: bool = False) -> None:
        """Hand the decisions to the CPUs: the stream's numbers (``scripted``: the CPUs
        to grant), then S_ON."""
        w, s = self.board.w, self.board.stream
        self.board.numbers[: len(numbers)] = array("Q", numbers)
        w[s + S_SCRIPT] = int(scripted)
        w[s + S_GEN] += 1
        w[s + S_LEN] = len(numbers)
        w[s + S_USED] = 0
        w[s + S_STEPS] = 0
        w[s + S_ON] = 1
        self.wakeups += 1

    def _start_streaming(self, seed: int, numbers: list[int]) -> None:
        """Start an execution with the decisions the CPUs' from its first step:
        each CPU starts the next one at its first scheduling point, the last
        one decides (see :mod:`~shmpamt.explorer.board`)."""
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
        self,
        c: int,
        parked: list[int],
        runnable: list[int],
        numbers: list[int],
        scripted: bool = False,
    ) -> None:
        """Grant ``c`` the step we decided, with a stream of ``numbers`` after it."""
        w, s = self.board.w, self.board.stream
        self._open_stream(numbers, scripted)
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
        scheduler: Scheduler,
        then: list[int],
        c: int,
        ring: list[int],
        ran: int,
        pending: dict[int, Access] | None,
        runnable_after: list[bool],
        steps: list[int],
        seen: int | None = None,
    ) -> _Followed:
        """The decisions for a run, one at a time with ``pending`` as each would have
        seen it, and what each step did; stops where the strategy abandons. ``seen``:
        the violations logged before the run, for a strategy that halts at the first."""
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
            opj, tgt, opnd_a, opnd_b, before, after = ring[j * REC : j * REC + R_LO]
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
                total = ring[(j - 1) * REC + R_LOG]
                if seen is not None and total != seen:
                    if self._halts_on(self.s.log.records()[seen:total]):
                        scheduler.violated(len(steps) - 1)  # before it decides what follows
                        seen = None
                    else:
                        seen = total
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
        for c, p in enumerate(self.fleet.procs):  # (fewer than cpus if the start was cut short)
            if p.exitcode is None:
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
            opi, target, _, _, before, after, lo, hi, _, call, fault = ring[r : r + REC]
            op = OPS[opi]
            result = join64(lo, hi)
            if opi in ATOMIC_OPS:
                if result >= 1 << 63:
                    result -= 1 << 64
                trace.append(TraceEvent(len(trace), c, op, target, before, after, result, "", call))
            else:
                note = f"{INJECTED_NOTE} {FAULT_KINDS[fault - 1]}" if fault else ""
                trace.append(TraceEvent(len(trace), c, op, target, None, None, result, note, call))
    return trace


def _fault_points(
    runs: list[tuple[int, list[int]]], cpus: int
) -> tuple[
    dict[int, list[int]], tuple[tuple[int, int, int], ...], list[tuple[int, int, int, int, bool]]
]:
    """The kind of every fault point each CPU passed, in its order, the faults
    injected: (cpu, its fault point, kind index), and every fault point by step:
    (step index, cpu, its fault point, kind index, injected)."""
    points: dict[int, list[int]] = {c: [] for c in range(cpus)}
    injected: list[tuple[int, int, int]] = []
    at: list[tuple[int, int, int, int, bool]] = []
    kind_of = FAULT_KIND.get
    step = 0
    for c, ring in runs:
        mine = points[c]
        for r in range(0, len(ring), REC):
            kind = kind_of(ring[r])
            if kind is not None:
                hit = bool(ring[r + R_FAULT])
                if hit:
                    injected.append((c, len(mine), kind))
                at.append((step + r // REC, c, len(mine), kind, hit))
                mine.append(kind)
        step += len(ring) // REC
    return points, tuple(sorted(injected)), at


#: a stream's steps: runs (CPU, records), each step's CPU, the CPUs' decisions
#: (runnable set, choice), runnable after each step, violation total after each
_StreamSteps = tuple[
    list[tuple[int, list[int]]], list[int], list[tuple[Sequence[int], int]], list[bool], list[int]
]


@dataclass(slots=True)
class _Run:
    """One execution under way: what the controller has learnt of it so far.

    Steps are known in batches (a grant's run-on, a stream); each batch's decisions
    are handed to the strategy (:meth:`took`) and its violations are attributed to
    the steps that logged them (:meth:`logged`).
    """

    scheduler: Scheduler
    log: ViolationLog
    #: the CPU of every step taken, in order
    steps: list[int] = field(default_factory=list)
    #: whether each step's CPU could run at the next decision
    runnable_after: list[bool] = field(default_factory=list)
    #: each grant's CPU and step records; TraceEvents are built only when read
    runs: list[tuple[int, list[int]]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    vsteps: list[int] = field(default_factory=list)
    #: violations attributed so far
    seen: int = 0
    current: int | None = None
    outcome: str = COMPLETE
    #: the parked CPUs' next accesses, for strategies that read them
    pending: dict[int, Access] | None = None

    def took(
        self,
        got: list[tuple[int, list[int]]],
        made: list[int],
        decisions: list[tuple[Sequence[int], int]],
        after: list[bool],
        asked: int | None,
    ) -> None:
        """Steps taken on a promise or by the strategy's rule: ask the strategy for
        their decisions, made at once as they would have been one hand-off each
        (``asked``: the current CPU at the first of them)."""
        if decisions:
            kept = self.scheduler.follow(decisions, asked)
            # Invariant: a strategy's promise, or its rule, holds for its decisions.
            if kept != len(decisions):
                at = len(self.steps) + len(made) - len(decisions) + kept
                raise _broken(self.scheduler, decisions[kept][1], at)
            self.runnable_after.extend(after)
        self.steps.extend(made)
        self.runs.extend(got)

    def logged(self, logs: list[int], first: int) -> None:
        """Attribute violations to steps: each logged up to the next one's start."""
        if logs[-1] != self.seen:
            for j, total in enumerate(logs):
                if total != self.seen:
                    new = self.log.records()[self.seen : total]
                    self.seen += len(new)
                    self.violations.extend(new)
                    self.vsteps.extend([first + j] * len(new))


def _broken(scheduler: Scheduler, cpu: int, step: int) -> SchedulingError:
    return SchedulingError(
        f"{scheduler.name} promised cpu {cpu} step {step}, then chose cpu {scheduler.steps[-1]}"
    )


@dataclass
class _Followed:
    """How replaying a run's decisions to a strategy that reads ``pending`` ended."""

    steps: int  # steps kept (the granted one and those the strategy confirmed)
    pending: dict[int, Access] | None  # as at the last decision
    stopped: bool  # the strategy abandoned the execution (SleepBlocked) there
