"""Source-DPOR with sleep sets: every Mazurkiewicz class of interleavings, each explored once.

Abdulla, Aronis, Jonsson, Sagonas, "Optimal Dynamic Partial Order Reduction",
POPL 2014 (the source-set algorithm). Two interleavings that differ only in
the order of independent steps (see :func:`~shmpamt.schedulers.base.dependent`)
reach the same state; it suffices to run one per equivalence class.

Stateless, like :mod:`dfs`: each execution replays a recorded prefix from the
initial state and then runs the non-preemptive default. After an execution the
scheduler analyses its events (CPU, access performed): for every race ``e`` ⋖
``e'`` it makes sure that the state before ``e`` will also be explored with
some *initial* of ``notdep(e).e'`` (a CPU that can start the reversed order),
unless one already is. Sleep sets stop the repeats: after a choice ``p`` is
explored at a state, ``p`` sleeps in its later siblings until a step dependent
with ``p``'s next one runs. An execution whose every enabled CPU sleeps can
only repeat a class already explored: :class:`SleepBlocked` is raised from
``next_cpu`` and the controller abandons it.

Blocking (a CPU parked at ``spin_lock`` of a held lock) is outside the paper's
model, so three conservative rules are added, each only ever adding work:

* a race whose reversal has no initial enabled before ``e`` adds every CPU
  enabled there (Flanagan and Godefroid's fallback);
* the next step of a *blocked* CPU is analysed like an executed one at each
  state where it has just become relevant (the CPU just parked, or the step
  before conflicts with it): that is how the acquisition that holds the lock
  is reversed with the waiting one, which after the unlock no longer races;
* after a step limit, every parked CPU's next step is analysed the same way.

One rule removes work: a blocking acquire's race with the release before it
(which cannot be reversed: the lock is held until the release) is reversed at
the acquire that release ends instead (``Access.acquires``/``releases``,
:meth:`~shmpamt.schedulers.races.Trace.races`). Reversing at the release only
ran an execution that ended with every CPU asleep, whose parked CPU then led
the analysis to that acquire; all of ``v6``'s 226 sleep-set blocked executions
at 2 CPUs x 2 rounds (one job) were such, and none is left.

``preemption_bound`` keeps backtracking within the bound: an alternative that
would need more preemptions is instead tried at the latest earlier state where
switching is free (Coons, Musuvathi, McKinley, OOPSLA 2013). The result is then
"bounded", never "verified".

``shard=(i, n)`` splits the search for n parallel jobs. The first
``SPLIT_LEVELS`` states on a path with two or more awake CPUs are *split
states*: every awake CPU is an alternative there, each with the sleep set the
sequential search would give it (the alternatives before it). A path through
the split states is named by its alternatives' positions; job i owns the paths
whose positions sum to i (mod n), so at the last split state it takes only its
own alternatives, and an execution that ends before reaching it counts for its
owner only. Subtrees below split states never add work to each other, so the
jobs explore disjoint sets of classes whose union is all of them (on the toys
of the tests the complete executions add up exactly; on the rig, trying every
awake CPU at a split state can repeat a class, as a may-write sleeper can in
the unsharded search). One level was not enough: the first alternative's subtree is
the big one (nothing sleeps in it yet), and at 2 CPUs x 2 rounds of ``rfc``
the job that took it ran 36,534 complete executions against the other's 5,049;
three levels spread the big and the small subtrees over the jobs, but still
unevenly against the real module (``rfc`` 12,931 against 750; ``v6`` with <= 1
fault 16,438 against 5,679). Eight levels gave 6,916 / 6,765 and 11,075 /
11,042 with the same totals (no repeated class), halving both wall times.

``subtree=prefix`` explores one subtree of the same split-state tree, for a
distributed proof (:mod:`shmpamt.campaign.proof`): the first ``len(prefix)``
split states take only the alternative at the prefix's position, and the next
one is a split state too, expanded fully; its alternatives are the subtree's
*children*, explored in order (``subtree_child`` says which one the current
path is in). A child not finished by one task becomes a task of its own with
the prefix one longer, so the split states reach as deep as the work demands:
more full expansion (sound, some redundancy), never a class lost or counted by
two tasks, because the children are exactly the subtrees a deeper split would
give. ``MAX_SUBTREE_DEPTH`` caps the prefix. With ``split_depth=d`` the first
``d`` such states on every path are split states, below the prefix too, so the
tree of subtrees is fixed in advance and a task can hand back the untaken
alternatives of every split state on its path (:mod:`.subtree`);
``subtree_splits`` and ``at_split`` tell it where it stands.

Races and sleep sets use what each executed step did (``executed``): a
conditional atomic that left its slot unchanged only read it. A sleeping CPU
keeps its may-write footprint, so a class may occasionally run twice (sound,
not optimal); the report therefore counts complete executions, not classes.

``halt_at_violation`` ends each execution's search at its first violating step
(the controller says which, ``violated``, before any later decision). It
searches the system in which a state with a logged violation has no successor,
whose valid dependence is the footprints' plus one rule: the violating step
disables every other CPU's next step, so it conflicts with all of them. It
writes :data:`~shmpamt.schedulers.races.HALT`, which every step reads
implicitly: it races with the latest concurrent step of each other CPU, and the
other CPUs' next steps at the halt race with it. Source-DPOR's theorem needs
only a valid independence relation, so every class of that system is explored
and every kind some interleaving logs at its first violation is found (a
step's kinds depend on the state its footprint covers, which the full search
assumes too). A narrower rule, only the next steps at the halt, lost first
violations on random toys; ``tests/test_halt.py`` checks the rule against brute
force. The execution then runs to its end by the non-preemptive default with
nothing to branch on, so kinds logged after a first violation are reported as
seen on that schedule, not searched for; a claim names the rule
(:data:`HALT_RULE`). The buggy built-ins' trees are mostly what happens after
their first violation: ``kai`` at 2 CPUs x 2 rounds needs 37,420 executions
instead of 200,823, ``rfc-norecheck`` 7,254 instead of 92,241.

Injected faults (``fault_kinds``, ``max_faults`` K > 0) are outcomes of a step,
explored as branches of the node where the step is taken, as VeriSoft explores
``VS_toss`` (Godefroid, "Model Checking for Programming Languages using
VeriSoft", POPL 1997). A fault point is the step of a CPU whose op is in
:data:`~shmpamt.schedulers.faults.FAULT_OPS`; the session says after each
execution which steps were fault points (``saw_fault_steps``). A node whose
chosen step is a fault point of an allowed kind, with fewer than K injections
on the path above it, is explored with the default outcome first and then,
once that subtree is done, with the same choice and the step injected, the
prefix above unchanged; only then does the node move on to its next CPU. The
plan of an execution (which the CPUs apply themselves) is read off its
replayed prefix: every node with an injected outcome, named by (CPU, the
CPU's fault-point index there, kind). Why no class with <= K faults is lost:
an outcome is read by its own step only and by nothing another CPU does, so
it is a fresh thread-local input of that step, and the step's footprint
covers both outcomes (an injected BUSY or NULL does less than the call). Fix the outcomes of every
fault point (a plan): the system is then deterministic, and source-DPOR
(Abdulla et al., above) explores each of its classes provided every state's
choice of a CPU stands for everything below it. With outcome branching it
does: a CPU ``p`` explored at a state has had its step there taken with
every allowed outcome before any later sibling runs, so ``p`` asleep in a
later sibling stands for all its outcomes; and every node below is expanded
the same way, so a subtree reached under any plan prefix contains every
extension of it with <= K injections. Races found in an execution with
injections add backtrack points above as usual: an injection only changes
what its own CPU does afterwards, which the race analysis sees as steps like
any other. With symmetry (below) a CPU whose step was injected counts as one
that took a shared step: its history is no longer the one its orbit's others
would take, so it is never pruned for, nor stands in for, them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from shmpamt.errors import SchedulingError
from shmpamt.records.estimate import explored_share
from shmpamt.schedulers.base import (
    Access,
    BaseScheduler,
    Claim,
    Nondeterminism,
    SleepBlocked,
    dependent,
)
from shmpamt.schedulers.faults import (
    KIND_INDEX,
    KINDS,
    BoardPlan,
    Injection,
    Plan,
    board_plan,
    scope,
)
from shmpamt.schedulers.races import HALT, Trace
from shmpamt.schedulers.symmetry import Symmetry

#: split states per path when the search is sharded (see the module docstring)
SPLIT_LEVELS: Final = 8
#: longest subtree prefix: a task at this depth explores its whole subtree, however long
MAX_SUBTREE_DEPTH: Final = 24
#: how a claim names ``halt_at_violation``: what it proves is the first violations' kinds
HALT_RULE: Final = "each execution's search ending at its first violation"


@dataclass
class _Node:
    """One state on the current path: what was parked there and what is explored from it."""

    enabled: tuple[int, ...]
    pending: dict[int, Access]
    current: int | None
    #: CPUs asleep on arrival, with their next step (it cannot change while they sleep)
    sleep: dict[int, Access]
    choice: int
    #: preemptions on the path up to and including ``choice``
    preemptions: int
    backtrack: set[int] = field(default_factory=set)
    #: choices explored here so far, in order; the last one is ``choice``
    done: list[int] = field(default_factory=list)
    #: a shard split state: its alternatives are the awake CPUs, in order
    split: bool = False
    alternatives: tuple[int, ...] = ()
    #: what ``choice`` actually did, when narrower than its pending access
    effect: Access | None = None
    #: split states on the path before this one, and the sum of their chosen positions
    path_before: tuple[int, int] = (0, 0)
    #: bit c: CPU c took a shared step before this state (symmetry, else 0)
    shared: int = 0
    #: enabled CPUs symmetry does not try here (their orbit's representative stands in)
    pruned: frozenset[int] = frozenset()
    #: ``choice``'s step is a fault point of this kind (index in KINDS), else -1
    fault: int = -1
    #: that step's position among ``choice``'s fault points in the execution
    point: int = 0
    #: the fault is injected into ``choice``'s step on this path
    injected: bool = False
    #: the injected outcome of ``choice``'s step is still to be explored here
    outcome_todo: bool = False

    def split_path(self) -> tuple[int, int]:
        """``path_before`` extended by this state (it names the job that owns the path)."""
        level, position = self.path_before
        if self.split:
            return level + 1, position + self.alternatives.index(self.choice)
        return level, position

    def step(self) -> Access:
        """The access ``choice`` performed: a failed conditional atomic only read."""
        return self.effect if self.effect is not None else self.pending[self.choice]

    def before_choice(self) -> Sequence[int]:
        """Alternatives explored before ``choice`` in the sequential search order."""
        if self.split:
            return self.alternatives[: self.alternatives.index(self.choice)]
        return self.done[:-1]

    def child_sleep(self) -> dict[int, Access]:
        """Sleep set after taking ``choice``: sleepers and earlier siblings it does not wake."""
        step = self.step()
        out = {q: a for q, a in self.sleep.items() if not dependent(step, a)}
        for q in self.before_choice():
            if not dependent(step, self.pending[q]):
                out[q] = self.pending[q]
        return out


@dataclass
class _Final:
    """The state an execution ended in, as far as the scheduler knows it."""

    pending: dict[int, Access]
    #: None: unknown (step limit, or no ``end_execution``), treat every CPU as maybe blocked
    enabled: tuple[int, ...] | None
    sleep: dict[int, Access]


def _is_preemption(enabled: Sequence[int], current: int | None, cpu: int) -> bool:
    return current is not None and current in enabled and cpu != current


class DPOR(BaseScheduler):
    """Exhaustive stateless model checking; needs ``pending`` at every ``next_cpu``."""

    name = "dpor"
    uses_pending = True

    def __init__(
        self,
        preemption_bound: int | None = None,
        max_executions: int | None = None,
        workload_seed: int = 0,
        shard: tuple[int, int] = (0, 1),
        subtree: Sequence[int] | None = None,
        split_depth: int | None = None,
        symmetry: Symmetry | None = None,
        fault_kinds: Sequence[str] = (),
        max_faults: int = 0,
        halt_at_violation: bool = False,
    ) -> None:
        """``preemption_bound`` None: unbounded; ``shard`` (index, count) for parallel jobs;
        ``subtree`` a prefix of split-state positions (a distributed proof's task);
        ``symmetry`` interchangeable CPUs (:mod:`~shmpamt.schedulers.symmetry`);
        ``fault_kinds`` the kinds injected as outcomes, at most ``max_faults`` per
        execution (see the module docstring); ``halt_at_violation``: each execution's
        search ends at its first violation (the module docstring says what that proves)."""
        unknown = [k for k in fault_kinds if k not in KIND_INDEX]
        if unknown:
            raise ValueError(f"unknown fault kind {unknown[0]!r}; use {', '.join(KINDS)}")
        if max_faults < 0:
            raise ValueError(f"max_faults must be >= 0, not {max_faults}")
        if preemption_bound is not None and preemption_bound < 0:
            raise ValueError("preemption bound must be >= 0")
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard {shard} must be (index, count) with 0 <= index < count")
        if subtree is not None:
            if count > 1:
                raise ValueError("a subtree is not sharded: give shard or subtree, not both")
            if len(subtree) > MAX_SUBTREE_DEPTH or any(p < 0 for p in subtree):
                raise ValueError(
                    f"subtree {tuple(subtree)} must be at most {MAX_SUBTREE_DEPTH} "
                    "positions, each >= 0"
                )
        if split_depth is not None and not (
            subtree is not None and len(subtree) <= split_depth <= MAX_SUBTREE_DEPTH
        ):
            raise ValueError(
                f"split_depth {split_depth} needs a subtree no longer than it, "
                f"and at most {MAX_SUBTREE_DEPTH}"
            )
        #: the subtree explored (None: the whole tree, or a shard of it)
        self.subtree = None if subtree is None else tuple(subtree)
        #: split states per path of a subtree task (None: one below its prefix)
        self.split_depth = split_depth
        super().__init__(workload_seed)
        self.preemption_bound = preemption_bound
        self.max_executions = max_executions
        self.shard = (index, count)
        self.symmetry = symmetry if symmetry is not None and symmetry.reduces else None
        #: the kinds injected as outcomes, in KINDS order, and at most how many per execution
        self.kinds = tuple(k for k in KINDS if k in fault_kinds)
        self._allowed = frozenset(KIND_INDEX[k] for k in self.kinds)
        self.max_faults = max_faults if self._allowed else 0
        #: an execution's search ends at its first violating step (``violated``)
        self.halts = halt_at_violation
        #: the current execution's first violating step, once the controller said so
        self._halt: int | None = None
        #: complete executions whose search ended at a violation
        self.halted = 0
        self.wants_fault_points = bool(self.max_faults)
        #: the current execution's injections (read off its replayed prefix)
        self.fault_plan: Plan = ()
        #: fault points of the execution just ended: step -> (cpu, point, kind, injected)
        self._fault_steps: dict[int, tuple[int, int, int, bool]] | None = None
        #: complete executions with no injected fault
        self.no_fault_executions = 0
        #: some execution passed a fault point of a kind this search injects (with no
        #: fault search there is nothing to reach: never an incident)
        self.reached = not self.max_faults
        self._stack: list[_Node] = []
        self._replay_len = 0
        #: the happens-before relation of the executions analysed so far, and how many
        #: of its first events (and the states before them) the current one shares
        self._trace = Trace()
        self._same_as_analysed = 0
        self._final: _Final | None = None
        self._blocked_now = False
        self._skipped_now = False
        self._analysed = True
        #: executions run, including sleep-set blocked ones (BaseScheduler counts them)
        #: executions that ran to their end: one per Mazurkiewicz class explored
        self.complete_executions = 0
        #: executions abandoned because every enabled CPU slept
        self.sleep_blocked = 0
        #: executions that found nothing for this shard (its alternative does not exist)
        self.shard_skipped = 0
        #: complete executions that ended in a deadlock
        self.deadlocks = 0
        #: True once the whole (bounded, sharded) space has been explored
        self.exhausted = False

    # -- search ---------------------------------------------------------------------

    def _start(self) -> bool:
        if self.exhausted:
            return False
        if self.executions == 0:
            self._reset_execution()
            return self.max_executions is None or self.max_executions >= 1
        self._analyse(len(self.last_steps))
        if len(self.last_steps) < self._replay_len:
            raise Nondeterminism(
                f"execution {self.executions} ended after {len(self.last_steps)} steps, before "
                f"the {self._replay_len} steps of its recorded prefix"
            )
        todo: list[int] = []
        while self._stack:
            node = self._stack[-1]
            if node.outcome_todo:
                break
            todo = sorted(node.backtrack - set(node.done) - node.sleep.keys() - node.pruned)
            if todo:
                break
            self._stack.pop()
        if not self._stack:
            self.exhausted = True
            return False
        if self.max_executions is not None and self.executions >= self.max_executions:
            return False
        if node.outcome_todo:
            # The same choice again, its step injected: the default outcome's subtree is done.
            node.outcome_todo = False
            node.injected = True
        else:
            node.choice = todo[0]
            node.done.append(node.choice)
            node.injected = False
            node.fault = -1
            before = self._stack[-2].preemptions if len(self._stack) > 1 else 0
            node.preemptions = before + _is_preemption(node.enabled, node.current, node.choice)
        self._replay_len = len(self._stack)
        if self.max_faults:
            self.fault_plan = tuple(
                sorted(Injection(n.choice, n.point, n.fault) for n in self._stack if n.injected)
            )
        # Steps before the changed choice are the last execution's (a replay).
        self._same_as_analysed = min(self._same_as_analysed, len(self._stack) - 1)
        self._reset_execution()
        return True

    def _reset_execution(self) -> None:
        self._fault_steps = None
        self._halt = None
        self._final = None
        self._blocked_now = False
        self._skipped_now = False
        self._analysed = False

    def _decide(
        self, runnable: Sequence[int], current: int | None, pending: Mapping[int, Access] | None
    ) -> int:
        if pending is None:
            raise SchedulingError("dpor needs the pending access of every parked CPU")
        i = len(self.steps)
        now = tuple(sorted(runnable))
        parked = dict(pending)
        if i < self._replay_len:
            node = self._stack[i]
            # Invariant: replaying the same choices reaches the same states.
            if node.enabled != now or node.pending != parked or node.current != current:
                raise Nondeterminism(
                    f"step {i} replayed with runnable {list(now)}, current {current} and pending "
                    f"{parked}, but was recorded with runnable {list(node.enabled)}, current "
                    f"{node.current} and pending {node.pending}: the execution is not "
                    "deterministic given the schedule"
                )
            return node.choice
        parent = self._stack[-1] if self._stack else None
        if self._halt is not None:
            return self._past_halt(parent, now, parked, current)
        sleep = parent.child_sleep() if parent else {}
        before = parent.preemptions if parent else 0
        index, count = self.shard
        shared, pruned = self._symmetric(parent, now)
        awake = [c for c in now if c not in sleep and c not in pruned]
        level, position = parent.split_path() if parent else (0, 0)
        if self.subtree is None:
            levels = SPLIT_LEVELS
        elif self.split_depth is None:
            levels = len(self.subtree) + 1
        else:
            levels = self.split_depth
        if (count > 1 or self.subtree is not None) and len(awake) >= 2 and level < levels:
            alts = tuple(awake)
            if self.subtree is not None:
                alts_mine = self._subtree_alternatives(alts, level, i)
            elif level == SPLIT_LEVELS - 1:
                alts_mine = [q for p, q in enumerate(alts) if (position + p) % count == index]
            else:
                alts_mine = list(alts)  # every job passes through: its paths go on below
            if not alts_mine:
                # None of the paths through here is this job's.
                self._skipped_now = True
                self._final = _Final(parked, now, sleep)
                raise SleepBlocked(f"shard {index}/{count}: no alternative at the split state")
            choice = alts_mine[0]
            node = _Node(now, parked, current, sleep, choice, 0, split=True, alternatives=alts)
            node.backtrack = set(alts_mine)
            node.path_before = (level, position)
            node.shared, node.pruned = shared, pruned
        else:
            if not awake:
                self._blocked_now = True
                self._final = _Final(parked, now, sleep)
                raise SleepBlocked(
                    f"step {i}: every enabled CPU {list(now)} is asleep; this execution "
                    "would only repeat an explored class"
                )
            choice = current if current in awake else awake[0]
            node = _Node(now, parked, current, sleep, choice, 0, backtrack={choice})
            node.path_before = (level, position)
            node.shared, node.pruned = shared, pruned
        node.preemptions = before + _is_preemption(now, current, choice)
        node.done.append(choice)
        self._stack.append(node)
        return choice

    def _past_halt(
        self,
        parent: _Node | None,
        now: tuple[int, ...],
        parked: dict[int, Access],
        current: int | None,
    ) -> int:
        """A state after the first violation: the search has ended there, so the
        execution runs on by the non-preemptive default, with nothing to branch on
        (no sleep set, no split, no outcome), only to report what happens after."""
        choice = current if current in now else now[0]
        node = _Node(now, parked, current, {}, choice, 0, backtrack={choice})
        if parent is not None:
            node.path_before = parent.split_path()
            node.preemptions = parent.preemptions + _is_preemption(now, current, choice)
        node.done.append(choice)
        self._stack.append(node)
        return choice

    def violated(self, step: int) -> None:
        if self.halts and (self._halt is None or step < self._halt):
            # Invariant: the controller says so before any decision after that step.
            if step + 1 < len(self._stack):
                raise SchedulingError(
                    f"dpor: told of a violation at step {step} after deciding step "
                    f"{len(self._stack) - 1}"
                )
            self._halt = step

    def _symmetric(self, parent: _Node | None, now: tuple[int, ...]) -> tuple[int, frozenset[int]]:
        """(CPUs that took a shared step before this state, CPUs symmetry prunes here)."""
        sym = self.symmetry
        if sym is None:
            return 0, frozenset()
        shared = 0
        if parent is not None:
            shared = parent.shared
            # An injected outcome sets its CPU apart from its orbit as a shared step does.
            if parent.injected or not sym.is_private(parent.choice, parent.step()):
                shared |= 1 << parent.choice
        return shared, sym.pruned(now, shared)

    def _subtree_alternatives(self, alts: tuple[int, ...], level: int, step: int) -> list[int]:
        """At a split state of a subtree task: the prefix's one alternative above the
        subtree, every alternative at its own level (its children)."""
        assert self.subtree is not None
        if level >= len(self.subtree):
            return list(alts)
        want = self.subtree[level]
        # Invariant: the tree is the same in every task (the execution is deterministic
        # given the schedule), so a prefix names an existing alternative.
        if want >= len(alts):
            raise Nondeterminism(
                f"step {step}: split state {level} has {len(alts)} alternatives {list(alts)}, "
                f"but the subtree {self.subtree} takes position {want}"
            )
        return [alts[want]]

    @property
    def subtree_child(self) -> int | None:
        """The child of the subtree (a position at its own split level) that the current
        path is in; None while the path has not reached that level (or never does: the
        subtree is then a single execution)."""
        if self.subtree is None:
            return None
        m = len(self.subtree)
        for node in self._stack:
            if node.split and node.path_before[0] == m:
                return node.alternatives.index(node.choice)
        return None

    @property
    def subtree_children(self) -> int:
        """How many children the subtree has (0 until its split state has been reached)."""
        if self.subtree is None:
            return 0
        m = len(self.subtree)
        return next(
            (len(n.alternatives) for n in self._stack if n.split and n.path_before[0] == m), 0
        )

    @property
    def subtree_splits(self) -> list[tuple[int, int]]:
        """The split states of the subtree on the current path, top down: the position
        taken at each and its number of alternatives (what a task hands back is read
        from them)."""
        if self.subtree is None:
            return []
        m = len(self.subtree)
        return [
            (n.alternatives.index(n.choice), len(n.alternatives))
            for n in self._stack
            if n.split and n.path_before[0] >= m
        ]

    @property
    def at_split(self) -> bool:
        """True when the execution about to start changed its choice at a split state of
        the subtree: everything below the state's earlier alternatives is done."""
        if self.subtree is None or not self._stack:
            return False
        top = self._stack[-1]
        return top.split and top.path_before[0] >= len(self.subtree)

    def lookahead(self, runnable: Sequence[int], cpu: int, limit: int) -> int:
        # A replayed prefix is followed whatever the footprints are (a different state
        # is Nondeterminism, raised when the step is asked); past it, sleep sets decide.
        now = tuple(sorted(runnable))
        i = len(self.steps)
        k = 0
        while k < limit and i + k < self._replay_len:
            node = self._stack[i + k]
            if node.choice != cpu or node.enabled != now or node.current != cpu:
                break
            k += 1
        return k

    def executed(self, access: Access) -> None:
        # Races and sleep sets are judged on what happened: two CPUs whose
        # inc_not_zero both failed on 0 only read the slot, so their order does
        # not matter. Replays of a prefix do the same, so the node stays as recorded.
        node = self._stack[len(self.steps) - 1]
        node.effect = None if access == node.pending[node.choice] else access

    def end_execution(self, outcome: str, pending: Mapping[int, Access] | None = None) -> None:
        super().end_execution(outcome, pending)
        if self._final is None and outcome != "sleep-blocked":
            parked = dict(pending) if pending is not None else self._parked_at_end()
            enabled = () if outcome in ("deadlock", "complete") else None
            sleep = self._stack[-1].child_sleep() if self._stack else {}
            self._final = _Final(parked, enabled, sleep)
        self._analyse(len(self.steps))

    def _parked_at_end(self) -> dict[int, Access]:
        """Without ``pending`` from the controller: who else was parked at the last step."""
        if not self._stack:
            return {}
        last = self._stack[-1]
        return {q: a for q, a in last.pending.items() if q != last.choice}

    def _split_owner(self) -> int:
        """The job that owns the current path (all of it, when nothing was split)."""
        position = self._stack[-1].split_path()[1] if self._stack else 0
        return position % self.shard[1]

    @property
    def skipped_last(self) -> bool:
        return self._skipped_now

    # -- injected faults ------------------------------------------------------------

    def board_faults(self) -> BoardPlan:
        return board_plan(self.fault_plan)

    def saw_faults(self, points: Mapping[int, Sequence[int]]) -> None:
        if not self.reached:
            self.reached = any(k in self._allowed for kinds in points.values() for k in kinds)

    def saw_fault_steps(self, steps: Sequence[tuple[int, int, int, int, bool]]) -> None:
        """The fault points of the execution just ended: (step, cpu, point, kind, injected)."""
        self._fault_steps = {s: (c, p, k, i) for s, c, p, k, i in steps}

    def _mark_faults(self, n: int) -> None:
        """Record which of the ``n`` steps were fault points; give the new ones their
        injected outcome to explore (with fewer than K injections above them)."""
        told = self._fault_steps
        if not self.max_faults or told is None:
            return
        above = 0
        replayed = self._replay_len - 1  # nodes above the changed one are as recorded
        for j in range(n):
            node = self._stack[j]
            c, point, kind, injected = told.get(j, (node.choice, 0, -1, False))
            # Invariant: the step is the node's choice, and an injection the plan asked
            # for is the one the CPU applied (its fault-point count matches the plan's).
            if c != node.choice or injected != node.injected:
                raise Nondeterminism(
                    f"step {j}: cpu {c} {'was' if injected else 'was not'} injected, but the "
                    f"search chose cpu {node.choice} {'with' if node.injected else 'without'} "
                    "an injection there"
                )
            if j < replayed or node.injected:
                if (node.fault, node.point) != (kind, point if kind >= 0 else 0):
                    raise Nondeterminism(
                        f"step {j}: replayed fault point {(kind, point)} was recorded as "
                        f"{(node.fault, node.point)}"
                    )
            else:
                node.fault, node.point = kind, point if kind >= 0 else 0
                searched = self._halt is None or j <= self._halt
                node.outcome_todo = searched and kind in self._allowed and above < self.max_faults
            above += node.injected

    # -- race analysis --------------------------------------------------------------

    def _analyse(self, n: int) -> None:
        """Add backtrack points for every race of the ``n``-step execution that just ended.

        Runs once per execution: from ``end_execution``, or from the next
        ``new_execution`` when the controller did not call it.
        """
        if self._analysed:
            return
        self._analysed = True
        if self._final is None:
            sleep = self._stack[-1].child_sleep() if self._stack else {}
            self._final = _Final(self._parked_at_end(), None, sleep)
        final = self._final
        # Invariant: every step of the execution has its node on the stack, and no more.
        if len(self._stack) != n:
            raise SchedulingError(f"dpor: {len(self._stack)} states recorded for {n} steps")
        self._mark_faults(n)
        m, final = self._searched(n, final)
        if self._blocked_now:
            self.sleep_blocked += 1
        elif self._skipped_now or self._split_owner() != self.shard[0]:
            # It ended before the last split state, on a path another job owns.
            self._skipped_now = True
            self.shard_skipped += 1
        else:
            self.complete_executions += 1
            self.halted += self._halt is not None
            self.deadlocks += self._halt is None and self.last_outcome == "deadlock"
            self.no_fault_executions += not self.fault_plan
        # Races among the events the last analysed execution shared with this one were
        # handled then, and handling a race again changes nothing (see _want): only
        # the events from the first changed one on are analysed.
        same = self._same_as_analysed
        trace = self._trace
        trace.truncate(same)
        halt = self._halt
        for j in range(same, m):
            s = self._stack[j]
            step = s.step()
            if j == halt:
                step = replace(step, writes=step.writes | {HALT})
            trace.add(s.choice, step)
        self._same_as_analysed = m
        for j in range(same, m):
            self._reverse_races(trace, trace.cpus[j], trace.accesses[j], j)
        for k in range(same + 1, m + 1):
            state: _Node | _Final = self._stack[k] if k < m else final
            enabled = state.enabled
            for q, access in sorted(state.pending.items()):
                if q in state.sleep:
                    continue
                if halt is not None and k == m:
                    # Its search ended here: the violating CPU cannot step again, and
                    # the others' next steps depend on the halt (read HALT).
                    if q != trace.cpus[halt]:
                        seen = replace(access, reads=access.reads | {HALT})
                        self._reverse_races(trace, q, seen, k)
                elif enabled is None and k == n:
                    # Unknown end (step limit): every parked CPU's next step counts.
                    self._reverse_races(trace, q, access, k)
                elif (
                    enabled is not None
                    and q not in enabled
                    and (q == trace.cpus[k - 1] or dependent(trace.accesses[k - 1], access))
                ):
                    # A blocked CPU that just parked, or whose step the last one conflicts with.
                    self._reverse_races(trace, q, access, k)

    def _searched(self, n: int, final: _Final) -> tuple[int, _Final]:
        """How many of the ``n`` steps the search analyses, and the state after them:
        all of them, or up to the first violation when the search halts there. The
        steps after it are the default schedule's, explored no further."""
        halt = self._halt
        if halt is None:
            return n, final
        # Invariant: a replayed prefix repeats its execution's steps, none of which
        # violated (its search would have ended there), up to the changed choice.
        if halt < self._replay_len - 1:
            raise Nondeterminism(
                f"step {halt} of a replayed prefix of {self._replay_len} steps logged a "
                "violation its recorded execution did not"
            )
        m = halt + 1
        for node in self._stack[m:]:
            node.backtrack = set(node.done)
            node.outcome_todo = False
        # Invariant: a sleep set ends an execution only before its first violation.
        assert not self._blocked_now, "dpor: sleep-set blocked after the search halted"
        if m == n:
            return m, final
        return m, _Final(dict(self._stack[m].pending), None, self._stack[m - 1].child_sleep())

    def _reverse_races(self, trace: Trace, cpu: int, access: Access, k: int) -> None:
        racing, dmask = trace.races(cpu, access, k)
        for i in racing:
            self._want(i, trace.initials(i, cpu, dmask, k))

    def _want(self, i: int, initials: set[int]) -> None:
        """Make sure state ``i`` explores one of ``initials`` (or everything, if none can run)."""
        node = self._stack[i]
        if self.symmetry is not None:
            initials = {self._representative(node, q) for q in initials}
        if node.split or initials & node.backtrack:
            return
        runnable = [q for q in sorted(initials) if q in node.enabled]
        if runnable:
            awake = [q for q in runnable if q not in node.sleep]
            self._add(i, (awake or runnable)[0])
        else:
            for q in node.enabled:
                if q not in node.pruned:
                    self._add(i, q)

    def _representative(self, node: _Node, cpu: int) -> int:
        assert self.symmetry is not None
        if cpu not in node.pruned:
            return cpu
        return self.symmetry.representative(cpu, node.enabled, node.shared)

    def _add(self, i: int, cpu: int) -> None:
        node = self._stack[i]
        if self.symmetry is not None:
            cpu = self._representative(node, cpu)
        if cpu in node.backtrack:
            return
        if self._affordable(i, cpu):
            node.backtrack.add(cpu)
            return
        # Over the bound here: try the latest earlier state where switching is free.
        for j in range(i - 1, -1, -1):
            earlier = self._stack[j]
            if earlier.split:
                return
            free = earlier.current is None or earlier.current not in earlier.enabled
            if free and cpu in earlier.enabled:
                # The latest such state, once: asking again must change nothing.
                if self.symmetry is not None:
                    cpu = self._representative(earlier, cpu)
                if cpu not in earlier.backtrack and self._affordable(j, cpu):
                    earlier.backtrack.add(cpu)
                return

    def _affordable(self, i: int, cpu: int) -> bool:
        if self.preemption_bound is None:
            return True
        node = self._stack[i]
        before = self._stack[i - 1].preemptions if i else 0
        return before + _is_preemption(node.enabled, node.current, cpu) <= self.preemption_bound

    # -- reporting ------------------------------------------------------------------

    @property
    def explored_share(self) -> float:
        """Share of this search's tree explored so far (:mod:`~shmpamt.records.estimate`)."""
        if self.exhausted:
            return 1.0
        return explored_share(
            (len(n.done) - 1, len((n.backtrack | set(n.done)) - n.sleep.keys() - n.pruned))
            for n in self._stack
        )

    @property
    def claim(self) -> Claim:
        if not self.exhausted:
            return "sampled"
        return "verified" if self.preemption_bound is None else "bounded"

    @property
    def no_fault_done(self) -> bool:
        """The search without faults is complete: with outcome branching, only when the
        whole search is (no-fault executions are spread over the tree)."""
        return self.exhausted

    @property
    def claim_scopes(self) -> tuple[tuple[str, Claim], ...]:
        """The claim per scope: (no faults, its claim), (<= K faults, its claim)."""
        out: list[tuple[str, Claim]] = [(scope(0, ()), self.claim)]
        if self.max_faults:
            out.append((scope(self.max_faults, self.kinds), self.claim))
        return tuple(out)

    def coverage(self) -> str:
        index, count = self.shard
        part = f" (shard {index}/{count}: this job's part only)" if count > 1 else ""
        if self.subtree is not None:
            part = f" (subtree {list(self.subtree)} only)"
        if self.symmetry is not None:
            part += f", with {self.symmetry.describe()}"
        counts = (
            f"{self.executions} executions, {self.sleep_blocked} sleep-set blocked, "
            f"{self.deadlocks} ending in deadlock"
        )
        if self.halts:
            counts += f", {self.halted} searched only up to their first violation"
        n = self.complete_executions
        if self.max_faults:
            counts += (
                f"; faults {scope(self.max_faults, self.kinds)} as outcomes of their steps: "
                f"{self.no_fault_executions} complete executions without one, the no-fault "
                f"part {'exhausted' if self.exhausted else 'not exhausted'} ("
                + ", ".join(f"{c} {sc}" for sc, c in self.claim_scopes)
                + ")"
            )
        if self.exhausted and self.preemption_bound is None:
            return (
                f"dpor: verified: all classes of interleavings explored, in {n} complete "
                f"executions{part} ({counts})"
            )
        if self.exhausted:
            return (
                f"dpor: bounded: all classes reachable with <= {self.preemption_bound} "
                f"preemptions explored, in {n} complete executions{part} ({counts})"
            )
        bound = "" if self.preemption_bound is None else f" <= {self.preemption_bound} preemptions,"
        return (
            f"dpor: NOT exhausted:{bound} {n} complete executions so far{part} ({counts}); "
            f"stopped by the budget before the space was covered, {self._how_far()}"
        )

    def _how_far(self) -> str:
        return f"about {self.explored_share:.1%} of its tree explored (estimate)"

    def scripted_choices(self, limit: int) -> list[int] | None:
        # The recorded prefix's choices after the step just decided: they are followed
        # whatever the state (a different one is Nondeterminism, raised when each is
        # confirmed through next_cpu with the footprints it saw).
        i = len(self.steps)
        stack = self._stack
        return [stack[j].choice for j in range(i, min(self._replay_len, i + limit))]
