"""DPOR against toy machines, checked against brute force: no processes, exact counts.

A toy thread is a list of steps; each step declares the shared variables it
may read and write (its :class:`Access`) and has an effect on them. Locks are
variables too: acquire and release both write the lock, and a CPU whose next
step acquires a held lock is parked but not runnable, as in the rig.

The oracle enumerates every maximal interleaving and canonicalises each by its
Mazurkiewicz trace (each CPU's steps, plus the order of every dependent pair of
steps of different CPUs): equal keys are equivalent interleavings, so the
number of distinct keys is the number of classes DPOR must explore.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError, dataclass, field, replace
from math import factorial

import pytest

from shmpamt.schedulers import (
    DFS,
    DPOR,
    Access,
    Nondeterminism,
    Scheduler,
    SchedulingError,
    SleepBlocked,
    dependent,
)
from shmpamt.schedulers.races import Trace

Vars = dict[str, int]
# (shared variables, this thread's locals) -> pc to jump to, or None for the next step
Effect = Callable[[Vars, Vars], "int | None"]


@dataclass(frozen=True)
class Step:
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    effect: Effect | None = None
    acquire: str | None = None
    release: str | None = None
    #: like a failed inc_not_zero: if the step left its variables as they were, it only read
    conditional: bool = False


def op(reads: Sequence[str], writes: Sequence[str], effect: Effect | None = None) -> Step:
    return Step(tuple(reads), tuple(writes), effect)


def inc_not_zero(var: str) -> Step:
    def eff(g: Vars, loc: Vars) -> None:
        if g[var] != 0:
            g[var] += 1

    return Step((var,), (var,), eff, conditional=True)


def acquire(lock: str) -> Step:
    return Step((lock,), (lock,), acquire=lock)


def release(lock: str) -> Step:
    return Step((lock,), (lock,), release=lock)


def write(var: str, value: int) -> Step:
    def eff(g: Vars, loc: Vars) -> None:
        g[var] = value

    return op((), (var,), eff)


@dataclass
class Toy:
    """Threads, initial shared values, and a bug predicate on the final shared values."""

    threads: list[list[Step]]
    init: Vars = field(default_factory=dict)
    bug: Callable[[Vars], bool] = lambda g: False
    #: acquires and releases say so in their accesses, as the rig's spin_lock and
    #: spin_unlock do (False: they are plain writes of the lock, as before)
    marks_locks: bool = True

    def ids(self) -> dict[str, int]:
        names = {n for t in self.threads for s in t for n in (*s.reads, *s.writes)}
        return {n: i for i, n in enumerate(sorted(names))}


class State:
    """One state of a toy: shared and local variables, program counters, lock holders."""

    def __init__(self, toy: Toy, in_state: bool = False) -> None:
        """``in_state``: parked footprints are judged in the current state, as the rig's
        controller does (a conditional step that would change nothing only reads)."""
        self.toy = toy
        self.in_state = in_state
        self.ids = toy.ids()
        self.shared: Vars = dict(toy.init)
        self.locals: list[Vars] = [{} for _ in toy.threads]
        self.pcs = [0] * len(toy.threads)
        self.holders: dict[str, int] = {}

    def copy(self) -> State:
        c = State.__new__(State)
        c.toy, c.ids, c.in_state = self.toy, self.ids, self.in_state
        c.shared = dict(self.shared)
        c.locals = [dict(loc) for loc in self.locals]
        c.pcs = list(self.pcs)
        c.holders = dict(self.holders)
        return c

    def parked(self) -> list[int]:
        return [c for c, t in enumerate(self.toy.threads) if self.pcs[c] < len(t)]

    def next_step(self, cpu: int) -> Step:
        return self.toy.threads[cpu][self.pcs[cpu]]

    def enabled(self, cpu: int) -> bool:
        s = self.next_step(cpu)
        return s.acquire is None or s.acquire not in self.holders

    def access(self, cpu: int) -> Access:
        s = self.next_step(cpu)
        a = Access.of([self.ids[n] for n in s.reads], [self.ids[n] for n in s.writes])
        if not self.toy.marks_locks:
            return a
        taken = frozenset({self.ids[s.acquire]}) if s.acquire else frozenset()
        freed = frozenset({self.ids[s.release]}) if s.release else frozenset()
        return Access(a.reads, a.writes, acquires=taken, releases=freed)

    def pending(self) -> dict[int, Access]:
        return {c: self.parked_access(c) for c in self.parked()}

    def parked_access(self, cpu: int) -> Access:
        s = self.next_step(cpu)
        access = self.access(cpu)
        if self.in_state and s.conditional and s.effect is not None:
            g = dict(self.shared)
            s.effect(g, dict(self.locals[cpu]))
            if all(g.get(n) == self.shared.get(n) for n in s.writes):
                return Access(reads=access.reads | access.writes)
        return access

    def run(self, cpu: int) -> Access:
        """Take ``cpu``'s step; what it did (a conditional step that changed nothing read)."""
        s = self.next_step(cpu)
        access = self.access(cpu)
        old = [self.shared.get(n) for n in s.writes]
        if s.acquire is not None:
            # Invariant: only a runnable CPU is granted a step.
            assert s.acquire not in self.holders
            self.holders[s.acquire] = cpu
        if s.release is not None:
            assert self.holders.pop(s.release) == cpu
        target = s.effect(self.shared, self.locals[cpu]) if s.effect else None
        self.pcs[cpu] = self.pcs[cpu] + 1 if target is None else target
        if s.conditional and old == [self.shared.get(n) for n in s.writes]:
            return Access(reads=access.reads | access.writes)
        return access

    def final(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self.shared.items()))


@dataclass
class Run:
    steps: tuple[int, ...]
    outcome: str
    final: tuple[tuple[str, int], ...]
    events: tuple[tuple[int, Access], ...]
    bug: bool


def run_toy(s: Scheduler, toy: Toy, max_steps: int = 10_000, in_state: bool = False) -> Run:
    """One execution driven by ``s``, exactly as the controller drives the rig."""
    st = State(toy, in_state)
    steps: list[int] = []
    events: list[tuple[int, Access]] = []
    current: int | None = None
    outcome = "complete"
    while True:
        parked = st.parked()
        if not parked:
            break
        runnable = [c for c in parked if st.enabled(c)]
        if not runnable:
            outcome = "deadlock"
            break
        if len(steps) >= max_steps:
            outcome = "step-limit"
            break
        pending = st.pending()
        try:
            cpu = s.next_cpu(runnable, current, pending)
        except SleepBlocked:
            s.end_execution("sleep-blocked")
            return Run(tuple(steps), "sleep-blocked", st.final(), tuple(events), False)
        done = st.run(cpu)
        # the controller reports what the step did, as the rig's does from the board
        s.executed(done)
        events.append((cpu, done))
        steps.append(cpu)
        current = cpu
    s.end_execution(outcome, st.pending())
    return Run(tuple(steps), outcome, st.final(), tuple(events), toy.bug(st.shared))


def explore(s: Scheduler, toy: Toy, limit: int = 100_000, in_state: bool = False) -> list[Run]:
    runs = []
    n = 0
    while s.new_execution():
        run = run_toy(s, toy, in_state=in_state)
        n += 1
        assert n <= limit, "runaway exploration"
        if not s.skipped_last:  # a sharded job's execution that another job counts
            runs.append(run)
    return runs


# -- the oracle ----------------------------------------------------------------------

ClassKey = tuple[tuple[tuple[Access, ...], ...], frozenset[tuple[int, int, int, int]], str]


def class_key(events: Sequence[tuple[int, Access]], outcome: str, cpus: int) -> ClassKey:
    """The Mazurkiewicz trace of an event sequence: per-CPU steps and dependent-pair order."""
    per_cpu: list[list[Access]] = [[] for _ in range(cpus)]
    labels = []
    for cpu, a in events:
        labels.append((cpu, len(per_cpu[cpu])))
        per_cpu[cpu].append(a)
    order = frozenset(
        (*labels[i], *labels[j])
        for i, j in itertools.combinations(range(len(events)), 2)
        if events[i][0] != events[j][0] and dependent(events[i][1], events[j][1])
    )
    return tuple(tuple(p) for p in per_cpu), order, outcome


@dataclass
class Space:
    interleavings: int
    classes: set[ClassKey]
    finals: set[tuple[tuple[str, int], ...]]
    bugs: set[tuple[tuple[str, int], ...]]
    #: fewest preemptions over the interleavings that end in a bug (None: no bug)
    bug_preemptions: int | None


def brute_force(toy: Toy) -> Space:
    """Every maximal interleaving of ``toy``, by recursion over copied states."""
    space = Space(0, set(), set(), set(), None)
    n = len(toy.threads)

    def go(st: State, events: list[tuple[int, Access]], current: int | None, pre: int) -> None:
        parked = st.parked()
        runnable = [c for c in parked if st.enabled(c)]
        if not runnable:
            outcome = "complete" if not parked else "deadlock"
            space.interleavings += 1
            space.classes.add(class_key(events, outcome, n))
            space.finals.add(st.final())
            if toy.bug(st.shared):
                space.bugs.add(st.final())
                if space.bug_preemptions is None or pre < space.bug_preemptions:
                    space.bug_preemptions = pre
            return
        for c in runnable:
            nxt = st.copy()
            a = nxt.run(c)
            cost = int(current is not None and current in runnable and c != current)
            go(nxt, [*events, (c, a)], c, pre + cost)

    go(State(toy), [], None, 0)
    return space


def dpor_classes(runs: Sequence[Run], cpus: int) -> list[ClassKey]:
    return [class_key(r.events, r.outcome, cpus) for r in runs if r.outcome != "sleep-blocked"]


def check_optimal(toy: Toy, in_state: bool = False, **kw: object) -> tuple[DPOR, Space]:
    """DPOR explores every class exactly once (complete executions), as brute force counts."""
    space = brute_force(toy)
    s = DPOR(**kw)  # type: ignore[arg-type]
    runs = explore(s, toy, in_state=in_state)
    keys = dpor_classes(runs, len(toy.threads))
    # Invariant: sleep sets never let two complete executions be equivalent...
    assert len(keys) == len(set(keys)) == s.complete_executions
    # ... and the race analysis never misses a class.
    assert set(keys) == space.classes
    assert s.exhausted and s.claim == "verified"
    assert s.executions <= space.interleavings
    return s, space


# -- toys ------------------------------------------------------------------------------


def writers(n: int) -> Toy:
    """n threads each write the one variable once: every order is its own class (n!)."""
    return Toy([[write("x", c + 1)] for c in range(n)], {"x": 0})


def private(k: int, threads: int = 2) -> Toy:
    """Threads with k steps each on their own variable: one class."""
    return Toy([[write(f"p{c}", i) for i in range(k)] for c in range(threads)])


def copy(dst: str, src: str) -> Step:
    def eff(g: Vars, loc: Vars) -> None:
        g[dst] = g.get(src, 0)

    return op((src,), (dst,), eff)


def readers_writers() -> Toy:
    """A classic mix: one writer, readers of one or two variables, an independent writer."""
    return Toy(
        [
            [write("x", 1), write("y", 1)],
            [copy("a", "y"), copy("b", "x")],
            [copy("c", "x")],
            [write("z", 1), copy("d", "z")],
        ],
        {"x": 0, "y": 0},
    )


def locked_inc(private_steps: int = 0) -> list[Step]:
    def load(g: Vars, loc: Vars) -> None:
        loc["t"] = g["x"]

    def store(g: Vars, loc: Vars) -> None:
        g["x"] = loc["t"] + 1

    pad = [write(f"q{i}", 1) for i in range(private_steps)]
    return [*pad, acquire("L"), op(("x",), (), load), op((), ("x",), store), release("L"), *pad]


def racy_inc() -> list[Step]:
    def load(g: Vars, loc: Vars) -> None:
        loc["t"] = g["x"]

    def store(g: Vars, loc: Vars) -> None:
        g["x"] = loc["t"] + 1

    return [op(("x",), (), load), op((), ("x",), store)]


# get/put of one refcounted resource, as in tdx_pamt_get/put: the fast paths are
# atomics on rc; the slow paths take L, re-read rc and add or remove the backing
# (pamt). "use" checks the backing is there while the reference is held.

END = 99


def get_put(recheck: bool = True) -> list[Step]:
    def inc_not_zero(g: Vars, loc: Vars) -> int | None:
        if g["rc"] != 0:
            g["rc"] += 1
            return 5  # got a reference: skip the slow path
        return None

    def read_rc(g: Vars, loc: Vars) -> None:
        loc["r"] = g["rc"]

    def add_or_inc(g: Vars, loc: Vars) -> None:
        if loc["r"] == 0:
            g["pamt"] = 1
            g["rc"] = 1
        else:
            g["rc"] += 1

    def use(g: Vars, loc: Vars) -> None:
        if g["pamt"] == 0:
            g["bug"] = 1

    def dec_and_test(g: Vars, loc: Vars) -> int | None:
        g["rc"] -= 1
        return None if g["rc"] == 0 else END

    def remove(g: Vars, loc: Vars) -> None:
        if not recheck or loc["r"] == 0:
            g["pamt"] = 0

    return [
        op(("rc",), ("rc",), inc_not_zero),  # 0
        acquire("L"),  # 1
        op(("rc",), (), read_rc),  # 2
        op(("rc",), ("rc", "pamt"), add_or_inc),  # 3
        release("L"),  # 4
        op(("pamt",), ("bug",), use),  # 5
        op(("rc",), ("rc",), dec_and_test),  # 6
        acquire("L"),  # 7
        op(("rc",), (), read_rc),  # 8
        op((), ("pamt",), remove),  # 9
        release("L"),  # 10
    ]


def get_put_toy(threads: int, recheck: bool = True) -> Toy:
    return Toy(
        [get_put(recheck) for _ in range(threads)],
        {"rc": 0, "pamt": 0, "bug": 0},
        bug=lambda g: g["bug"] == 1 or (g["rc"] == 0) != (g["pamt"] == 0),
    )


def abba() -> Toy:
    """Two locks taken in opposite orders: some classes end in a deadlock."""
    t0 = [acquire("L1"), acquire("L2"), write("x", 1), release("L2"), release("L1")]
    t1 = [acquire("L2"), acquire("L1"), write("x", 2), release("L1"), release("L2")]
    return Toy([t0, t1], {"x": 0})


def planted_3_preemptions() -> Toy:
    """x climbs 0 -> 5 only if A and B strictly alternate a1 b1 a2 b2 a3: three preemptions.

    The switches after a1, b1 and a2 are away from a CPU that still has a step
    to take (the one after b2 is not: B's last step is private and may wait);
    a third thread adds independent noise.
    """

    def step_if(want: int, new: int) -> Step:
        def eff(g: Vars, loc: Vars) -> None:
            if g["x"] == want:
                g["x"] = new

        return op(("x",), ("x",), eff)

    a = [step_if(0, 1), step_if(2, 3), step_if(4, 5)]
    b = [step_if(1, 2), step_if(3, 4), write("pb", 1)]
    c = [write("pc", 1), write("pc", 2)]
    return Toy([a, b, c], {"x": 0}, bug=lambda g: g["x"] == 5)


TOYS: dict[str, Callable[[], Toy]] = {
    "writers-3": lambda: writers(3),
    "private-3": lambda: private(3),
    "readers-writers": readers_writers,
    "racy-inc": lambda: Toy([racy_inc(), racy_inc()], {"x": 0}, bug=lambda g: g["x"] != 2),
    "locked-inc-3": lambda: Toy([locked_inc(), locked_inc(), locked_inc()], {"x": 0}),
    "locked-inc-padded": lambda: Toy([locked_inc(1), locked_inc(1)], {"x": 0}),
    "abba": abba,
    "get-put": lambda: get_put_toy(2),
    "get-put-norecheck": lambda: get_put_toy(2, recheck=False),
    "planted": planted_3_preemptions,
}


# -- dependence and races ---------------------------------------------------------------


def test_dependent_is_a_conflict_on_a_shared_object() -> None:
    r1, w1, r2 = Access.of([1]), Access.of((), [1]), Access.of([2])
    assert not dependent(r1, r1)  # two reads commute
    assert dependent(r1, w1) and dependent(w1, r1) and dependent(w1, w1)
    assert not dependent(w1, r2)
    assert not dependent(Access(), w1)
    assert hasattr(Access, "__slots__")
    with pytest.raises(FrozenInstanceError):
        r1.reads = frozenset()  # type: ignore[misc]


def test_trace_finds_races_and_initials() -> None:
    w, r, z = Access.of((), [0]), Access.of([0]), Access.of((), [9])
    # cpu0 writes x, cpu2 works privately, cpu1 reads x: one race (0, 2).
    t = Trace([(0, w), (2, z), (1, r)])
    assert t.hb == [0, 0, 0b001]
    racing, dmask = t.races(1, r, 2)
    assert racing == [0] and dmask == 0b001
    # Reversing puts cpu1's read first; cpu2's independent step may start it too.
    assert t.initials(0, 1, dmask, 2) == {1, 2}
    # A second write by cpu1 after its read races with nothing new: program order covers it.
    t2 = Trace([(0, w), (1, r), (1, w)])
    assert t2.races(1, w, 2)[0] == []


# -- soundness against brute force --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOYS))
def test_dpor_finds_every_outcome_unbounded_dfs_finds(name: str) -> None:
    toy = TOYS[name]()
    dfs = DFS(preemption_bound=None)
    dfs_runs = explore(dfs, toy)
    s = DPOR()
    runs = [r for r in explore(s, toy) if r.outcome != "sleep-blocked"]
    assert {(r.final, r.outcome) for r in runs} == {(r.final, r.outcome) for r in dfs_runs}
    assert {r.final for r in runs if r.bug} == {r.final for r in dfs_runs if r.bug}
    assert s.executions <= dfs.executions
    assert s.exhausted and dfs.exhausted


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("writers-3", 6),
        ("private-3", 1),
        ("readers-writers", 6),
        ("racy-inc", 4),
        ("locked-inc-3", 6),
        ("locked-inc-padded", 10),
        ("abba", 3),
        ("get-put", 110),
        ("get-put-norecheck", 110),
        ("planted", 10),
    ],
)
def test_dpor_explores_each_class_exactly_once(name: str, classes: int) -> None:
    s, space = check_optimal(TOYS[name]())
    # The brute-force count is pinned too, so a broken oracle cannot hide a broken DPOR.
    assert len(space.classes) == classes == s.complete_executions
    assert f"in {classes} complete executions" in s.coverage() and "verified" in s.coverage()


@pytest.mark.parametrize("name", ["locked-inc-3", "locked-inc-padded", "abba", "get-put"])
def test_critical_sections_are_reordered_at_their_acquires(name: str) -> None:
    """A release and the next acquire of its lock by another CPU cannot be swapped (the
    lock is held before the release); the acquires can. With the locks' accesses
    marked, the race is reversed where the lock was taken: the same classes, and no
    execution thrown away with every CPU asleep, which reversing at the release cost."""
    marked, space = check_optimal(TOYS[name]())
    plain, _ = check_optimal(replace(TOYS[name](), marks_locks=False))
    assert marked.complete_executions == plain.complete_executions == len(space.classes)
    assert marked.sleep_blocked == 0 and marked.executions <= plain.executions
    if name in ("locked-inc-padded", "get-put"):  # work outside the lock lets CPUs sleep
        assert plain.sleep_blocked > 0


def test_a_release_stands_for_its_acquire_only_for_a_blocking_acquire() -> None:
    """The substitution's scope: the acquire's race goes to the other CPU's acquire, a
    plain write of the lock after the release still races with the release."""
    lock = 9
    take = Access(frozenset({lock}), frozenset({lock}), acquires=frozenset({lock}))
    give = Access(frozenset({lock}), frozenset({lock}), releases=frozenset({lock}))
    t = Trace([(0, take), (0, Access.of((), [1])), (0, give)])
    assert t.races(1, take, 3)[0] == [0]
    assert t.races(1, Access.of((), [lock]), 3)[0] == [2]
    # Another chain from the critical section to the acquire (cpu 1 read what cpu 0
    # wrote inside it): nothing but the release's order is left to reverse.
    t.add(1, Access.of([1], ()))
    assert t.races(1, take, 4)[0] == []
    # A release its CPU did not take the lock for (a second one) is not substituted.
    twice = Trace([(0, take), (0, give), (0, give)])
    assert twice.races(1, take, 3)[0] == [2]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_n_writers_of_one_variable_have_n_factorial_classes(n: int) -> None:
    s, _ = check_optimal(writers(n))
    assert s.complete_executions == factorial(n) and s.sleep_blocked == 0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_private_work_is_one_class(k: int) -> None:
    s, space = check_optimal(private(k))
    assert s.executions == s.complete_executions == 1
    assert space.interleavings == factorial(2 * k) // factorial(k) ** 2


def test_dpor_finds_the_deadlock() -> None:
    s = DPOR()
    runs = explore(s, abba())
    assert [r.outcome for r in runs].count("deadlock") == s.deadlocks == 1


def test_get_put_figures() -> None:
    """The lock-based get/put toy: classes far below interleavings; norecheck's bug is found."""
    _, space = check_optimal(get_put_toy(2))
    assert space.interleavings == 1032 and len(space.classes) == 110
    assert not space.bugs
    s = DPOR()
    runs = explore(s, get_put_toy(2, recheck=False))
    assert any(r.bug for r in runs)


def test_planted_bug_needs_three_preemptions_and_dpor_finds_it() -> None:
    toy = planted_3_preemptions()
    space = brute_force(toy)
    assert space.bug_preemptions == 3
    runs = explore(DPOR(), toy)
    assert any(r.bug for r in runs)
    # Preemption-bounded searches: DFS and DPOR miss it at 2, DPOR finds it at 3.
    assert not any(r.bug for r in explore(DFS(preemption_bound=2), toy))
    bounded2 = DPOR(preemption_bound=2)
    assert not any(r.bug for r in explore(bounded2, toy))
    bounded3 = DPOR(preemption_bound=3)
    assert any(r.bug for r in explore(bounded3, toy))
    assert bounded3.claim == "bounded" and "bounded: " in bounded3.coverage()
    assert "<= 3 preemptions" in bounded3.coverage() and "verified" not in bounded3.coverage()


# -- the interface ---------------------------------------------------------------------------


def test_sleep_blocked_executions_are_signalled_and_counted() -> None:
    s = DPOR()
    runs = explore(s, replace(TOYS["locked-inc-padded"](), marks_locks=False))
    blocked = [r for r in runs if r.outcome == "sleep-blocked"]
    assert blocked and len(blocked) == s.sleep_blocked
    assert s.executions == s.complete_executions + s.sleep_blocked


def test_dpor_needs_pending() -> None:
    s = DPOR()
    assert s.new_execution()
    with pytest.raises(SchedulingError, match="pending"):
        s.next_cpu([0, 1], None)


def test_dpor_reports_changed_pending_accesses_on_replay() -> None:
    a, b = Access.of((), [1]), Access.of((), [2])
    s = DPOR()
    assert s.new_execution()
    s.next_cpu([0, 1], None, {0: a, 1: a})
    s.next_cpu([1], 0, {1: a})
    s.end_execution("complete", {})
    assert s.new_execution()  # the two writes race: cpu 1 first
    with pytest.raises(Nondeterminism, match="pending"):
        s.next_cpu([0, 1], None, {0: a, 1: b})


def test_without_end_execution_the_search_is_the_same() -> None:
    # An old controller that never calls end_execution: analysis happens in new_execution.
    toy = TOYS["get-put"]()
    s = DPOR()
    keys = []
    while s.new_execution():
        st = State(toy)
        current = None
        try:
            while st.parked():
                runnable = [c for c in st.parked() if st.enabled(c)]
                pending = st.pending()
                cpu = s.next_cpu(runnable, current, pending)
                keys.append(cpu)
                st.run(cpu)
                current = cpu
        except SleepBlocked:
            pass
    assert s.complete_executions == 110


def test_budget_stops_before_exhaustion() -> None:
    s = DPOR(max_executions=3)
    explore(s, writers(3))
    assert s.executions == 3 and not s.exhausted and s.claim == "sampled"
    assert "NOT exhausted" in s.coverage()


# -- sharding -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["writers-3", "readers-writers", "get-put", "abba", "planted"])
@pytest.mark.parametrize("count", [2, 3, 5])
def test_shards_partition_the_classes(name: str, count: int) -> None:
    toy = TOYS[name]()
    whole = DPOR()
    whole_keys = dpor_classes(explore(whole, toy), len(toy.threads))
    union: list[ClassKey] = []
    complete = 0
    for i in range(count):
        part = DPOR(shard=(i, count))
        union += dpor_classes(explore(part, toy), len(toy.threads))
        complete += part.complete_executions
        assert part.exhausted
        assert f"shard {i}/{count}" in part.coverage()
    # Invariant: every class in exactly one shard, and the counts add up.
    assert len(union) == len(set(union)) == complete == whole.complete_executions
    assert set(union) == set(whole_keys)


def test_shard_parameters_are_checked() -> None:
    for bad in [(1, 1), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError):
            DPOR(shard=bad)
    with pytest.raises(ValueError):
        DPOR(preemption_bound=-1)


def test_failed_conditional_atomics_commute_like_reads() -> None:
    """Two inc_not_zero that both find 0 only read: one class, not two."""
    toy = Toy([[inc_not_zero("x")], [inc_not_zero("x")]], init={"x": 0})
    s, space = check_optimal(toy)
    assert len(space.classes) == 1 and s.complete_executions == 1


def test_dpor_with_effects_still_finds_every_class() -> None:
    """A writer that makes the conditional steps succeed: every order that matters is run."""
    toy = Toy(
        [[inc_not_zero("x")], [inc_not_zero("x")], [write("x", 1)]],
        init={"x": 0},
        bug=lambda g: g["x"] == 3,
    )
    space = brute_force(toy)
    s = DPOR()
    keys = dpor_classes(explore(s, toy), len(toy.threads))
    # Invariant: no class is missed. (Sleepers keep their may-write footprint, so a
    # class may be run twice: sound, merely not optimal.)
    assert set(keys) == space.classes and len(space.classes) > 1
    assert s.exhausted and s.claim == "verified" and space.bugs
    assert s.executions <= space.interleavings


# -- parked steps judged in their state -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(TOYS))
def test_in_state_footprints_still_find_every_class(name: str) -> None:
    """The controller narrows a parked conditional atomic that would change nothing to a
    read; DPOR must still run every class once, and find every outcome brute force finds."""
    toy = TOYS[name]()
    s, _ = check_optimal(toy, in_state=True)
    plain = DPOR()
    explore(plain, toy)
    assert s.executions <= plain.executions


def test_a_failing_inc_not_zero_sleeps_through_reads_of_its_slot() -> None:
    """cpu0's inc_not_zero on 0 races with cpu1's later write of x. Once cpu0 sleeps in the
    reversal, cpu1's read of x wakes it only if cpu0 counts as a may-write; judged in the
    state (it would fail: a read), it sleeps on until the write, and the class where cpu0
    fails before the write is not run a second time."""
    toy = Toy([[inc_not_zero("x")], [op(("x",), ()), write("x", 5)]], init={"x": 0})
    narrowed, space = check_optimal(toy, in_state=True)
    plain = DPOR()
    runs = [r for r in explore(plain, toy) if r.outcome == "complete"]
    assert len(space.classes) == 2 == narrowed.complete_executions
    assert plain.complete_executions == 3  # one class twice: the may-write sleeper woke
    assert len({class_key(r.events, r.outcome, 2) for r in runs}) == 2


# -- incremental analysis ------------------------------------------------------------------


class _Reanalysing(DPOR):
    """DPOR that analyses every execution from its first event, as it once did."""

    def _analyse(self, n: int) -> None:
        self._same_as_analysed = 0
        super()._analyse(n)


@pytest.mark.parametrize("name", sorted(TOYS))
@pytest.mark.parametrize("bound", [None, 0, 1, 2])
@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_analysing_only_the_new_events_explores_the_same(
    name: str, bound: int | None, shard: tuple[int, int]
) -> None:
    # Races among the events an execution shares with the last one were handled
    # then; handling them again must add nothing, so both searches are the same.
    toy = TOYS[name]()
    fast, full = DPOR(bound, shard=shard), _Reanalysing(bound, shard=shard)
    assert [r.steps for r in explore(fast, toy)] == [r.steps for r in explore(full, toy)]
    assert fast.executions == full.executions and fast.exhausted and full.exhausted
    assert fast.complete_executions == full.complete_executions
