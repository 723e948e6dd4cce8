"""The strategies against a toy machine: CPUs are generators, each ``yield`` a scheduling point.

No processes: the strategies are pure, so their search behaviour is proven here
exactly, and the process plumbing only has to deliver the same calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from math import factorial

import pytest

from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers import (
    DFS,
    DPOR,
    HELP,
    PCT,
    POS,
    STRATEGIES,
    Access,
    BaseScheduler,
    Nondeterminism,
    Portfolio,
    RandomWalk,
    Replay,
    ScheduleMismatch,
    Scheduler,
    SchedulingError,
    SleepBlocked,
    SplitMix64,
    claim_of,
    default_choice,
    make_scheduler,
)
from shmpamt.schedulers.base import below_limit, uniform_pick

# -- the toy machine -------------------------------------------------------------


@dataclass
class Machine:
    x: int = 0
    lock: int | None = None
    log: list[str] = field(default_factory=list)


# A program yields before each shared-memory operation; yielding "lock" means
# the next operation takes the lock, so the CPU is runnable only while it is free.
Program = Callable[[int, Machine, Scheduler], Iterator[str | None]]


def racy_inc(pad: int = 0) -> Program:
    """x++ as a separate load and store, with ``pad`` private steps before and after."""

    def prog(cpu: int, m: Machine, s: Scheduler) -> Iterator[str | None]:
        for _ in range(pad):
            yield None
        yield None
        tmp = m.x
        yield None
        m.x = tmp + 1
        for _ in range(pad):
            yield None

    return prog


def steps_only(n: int) -> Program:
    def prog(cpu: int, m: Machine, s: Scheduler) -> Iterator[str | None]:
        for _ in range(n):
            yield None
            m.log.append(f"{cpu}")

    return prog


def locked_inc(cpu: int, m: Machine, s: Scheduler) -> Iterator[str | None]:
    yield "lock"
    m.lock = cpu
    yield None
    tmp = m.x
    yield None
    m.x = tmp + 1
    yield None
    m.lock = None
    yield None  # private work after the unlock


def data_inc(cpu: int, m: Machine, s: Scheduler) -> Iterator[str | None]:
    """Adds a workload-chosen amount, racily: replay must reproduce the data too."""
    amount = s.next_u64() % 5 + 1
    yield None
    tmp = m.x
    yield None
    m.x = tmp + amount
    m.log.append(f"{cpu}+{amount}")


@dataclass
class Run:
    steps: tuple[int, ...]
    machine: Machine
    outcome: str = "complete"


# This machine does not say what a step touches, so every step claims the one
# shared object: all steps conflict, which is sound for DPOR and POS (no reduction).
EVERYTHING = Access.of([0], [0])


def run_once(s: Scheduler, programs: list[Program]) -> Run:
    """One execution: grant steps until every CPU has finished (or DPOR abandons it)."""
    m = Machine()
    gens = {}
    wants: dict[int, str | None] = {}
    for cpu, p in enumerate(programs):
        g = p(cpu, m, s)
        try:
            wants[cpu] = next(g)  # run to the first scheduling point
            gens[cpu] = g
        except StopIteration:
            pass
    steps: list[int] = []
    current: int | None = None
    while gens:
        runnable = [c for c in sorted(gens) if wants[c] != "lock" or m.lock is None]
        assert runnable, "toy deadlock"
        try:
            cpu = s.next_cpu(runnable, current, dict.fromkeys(gens, EVERYTHING))
        except SleepBlocked:
            s.end_execution("sleep-blocked")
            return Run(tuple(steps), m, "sleep-blocked")
        steps.append(cpu)
        try:
            wants[cpu] = next(gens[cpu])
        except StopIteration:
            del gens[cpu]
        current = cpu
    s.end_execution("complete", {})
    return Run(tuple(steps), m)


def explore(s: Scheduler, programs: list[Program], bug: Callable[[Machine], bool]) -> list[Run]:
    """Every execution the strategy asks for; returns the failing ones."""
    failing = []
    while s.new_execution():
        r = run_once(s, programs)
        if bug(r.machine):
            failing.append(r)
    return failing


def lost_update(m: Machine) -> bool:
    return m.x != 2


def first_failure(s: Scheduler, programs: list[Program], bug: Callable[[Machine], bool]) -> int:
    """Executions until the first failing one (0 if none)."""
    n = 0
    while s.new_execution():
        n += 1
        if bug(run_once(s, programs).machine):
            return n
    return 0


# -- an independent oracle: brute-force interleavings ------------------------------


def brute_force(counts: tuple[int, ...], bound: int | None) -> set[tuple[int, ...]]:
    """All step sequences for CPUs with ``counts`` steps and at most ``bound`` preemptions."""
    out: set[tuple[int, ...]] = set()

    def go(left: list[int], current: int | None, pre: int, seq: list[int]) -> None:
        if bound is not None and pre > bound:
            return
        if not any(left):
            out.add(tuple(seq))
            return
        for cpu, n in enumerate(left):
            if n == 0:
                continue
            cost = int(current is not None and left[current] > 0 and cpu != current)
            left[cpu] -= 1
            seq.append(cpu)
            go(left, cpu, pre + cost, seq)
            seq.pop()
            left[cpu] += 1

    go(list(counts), None, 0, [])
    return out


# -- common helpers ---------------------------------------------------------------


def test_splitmix_is_fixed_and_uniformish() -> None:
    r = SplitMix64(0)
    # Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
    assert r.next_u64() == 0xE220A8397B1DCDAF
    assert r.next_u64() == 0x6E789E6AA1B965F4
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[r.below(3)] += 1
    assert all(800 < c < 1200 for c in counts)
    assert sorted(r.sample(range(10), 10)) == list(range(10))
    with pytest.raises(ValueError):
        r.below(0)


def test_default_choice_keeps_current_else_lowest() -> None:
    assert default_choice([0, 1, 2], 1) == 1
    assert default_choice([0, 2], 1) == 0
    assert default_choice([2, 1], None) == 1
    with pytest.raises(SchedulingError):
        default_choice([], None)


@pytest.mark.parametrize(
    "s",
    [
        RandomWalk(1, max_executions=3),
        PCT(2, 1, max_executions=3),
        DFS(1),
        Replay(Schedule("v", 2, 1, 1, 1, 0, (0, 1))),
        DPOR(),
        POS(1, max_executions=3),
        Portfolio(1, max_executions=3),
    ],
    ids=lambda s: s.name,
)
def test_every_strategy_satisfies_the_protocol(s: Scheduler) -> None:
    assert isinstance(s, Scheduler)
    assert s.name
    assert s.new_execution()
    run_once(s, [steps_only(2), steps_only(2)])
    assert isinstance(s.next_u64(), int)
    assert isinstance(s.coverage(), str)
    assert "\n" not in s.coverage()
    assert claim_of(s) in ("verified", "bounded", "sampled")


def test_old_call_sites_without_pending_still_work() -> None:
    for s in (RandomWalk(1), PCT(2, 1), DFS(None), POS(1)):
        assert s.new_execution()
        assert s.next_cpu([0, 1], None) in (0, 1)
        s.end_execution("deadlock")
        assert s.last_outcome == "deadlock"
    with pytest.raises(ValueError, match="outcome"):
        RandomWalk(1).end_execution("exploded")


def test_pending_must_cover_the_runnable_cpus() -> None:
    s = RandomWalk(1)
    assert s.new_execution()
    with pytest.raises(SchedulingError, match="do not cover"):
        s.next_cpu([0, 1], None, {0: EVERYTHING})


# -- the registry -------------------------------------------------------------------


def test_registry_names_help_and_errors() -> None:
    assert set(STRATEGIES) == set(HELP) >= {"portfolio", "random", "pct", "pos", "dfs", "dpor"}
    assert STRATEGIES[0] == "portfolio"
    assert all(HELP[n] and "\n" not in HELP[n] for n in STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_scheduler("bfs", seed=1)
    with pytest.raises(ValueError, match="shard"):
        make_scheduler("dpor", seed=1, shard=(2, 2))
    with pytest.raises(ValueError, match="sharded"):
        make_scheduler("dfs", seed=1, shard=(0, 2))


def _registered_trace(name: str, seed: int) -> tuple[list[tuple[int, tuple[int, ...]]], str]:
    s = make_scheduler(name, seed=seed, depth=2, preemptions=None, max_executions=40)
    assert isinstance(s, BaseScheduler) and isinstance(s, Scheduler)
    out = []
    while s.new_execution():
        r = run_once(s, [racy_inc(), racy_inc(), steps_only(1)])
        out.append((s.workload_seed, r.steps))
    return out, claim_of(s)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_registered_strategy_runs_a_toy_deterministically(name: str) -> None:
    first, claim = _registered_trace(name, 5)
    assert first and first == _registered_trace(name, 5)[0]
    if name == "dpor":
        assert claim == "verified"  # the toy is tiny: the unbounded search finishes
    elif name == "dfs":
        assert claim == "bounded"  # dfs's default bound is 2 preemptions
    elif name != "portfolio":
        assert claim == "sampled" and len(first) == 40


# -- random walk ----------------------------------------------------------------------


def test_random_walk_finds_the_lost_update() -> None:
    s = RandomWalk(seed=7, max_executions=200)
    n = first_failure(s, [racy_inc(), racy_inc()], lost_update)
    assert 0 < n <= 200


def test_random_walk_is_deterministic_per_seed() -> None:
    def trace(seed: int) -> list[tuple[int, ...]]:
        s = RandomWalk(seed=seed, max_executions=20)
        out = []
        while s.new_execution():
            out.append(run_once(s, [racy_inc(2), racy_inc(2), racy_inc(1)]).steps)
        return out

    assert trace(3) == trace(3)
    assert trace(3) != trace(4)


def test_random_walk_coverage_counts_runs_and_steps() -> None:
    s = RandomWalk(seed=1, max_executions=5)
    explore(s, [steps_only(2), steps_only(3)], lambda m: False)
    assert s.executions == 5 and s.total_steps == 25
    assert "5 executions" in s.coverage() and "25 scheduled steps" in s.coverage()


# -- PCT ------------------------------------------------------------------------------


def test_pct_finds_the_lost_update() -> None:
    s = PCT(depth=2, seed=11, max_executions=200)
    assert 0 < first_failure(s, [racy_inc(), racy_inc()], lost_update) <= 200


def test_pct_depth_1_never_preempts() -> None:
    # With d = 1 there are no change points: a fixed priority order runs each CPU
    # to completion, so the lost update (which needs a preemption) is never seen.
    s = PCT(depth=1, seed=5, max_executions=100)
    assert explore(s, [racy_inc(1), racy_inc(1)], lost_update) == []
    assert "1/(n*k^0)" in s.coverage()


def test_pct_finds_a_depth_2_bug_at_least_at_the_predicted_rate() -> None:
    # The lost update needs two orderings (load1 before store0, load0 before
    # store1): depth 2. With n = 2 CPUs and k counted steps, PCT's guarantee is
    # p >= 1/(n*k) per run; padding makes k large so the bound is not trivial.
    pad = 6
    runs = 600
    s = PCT(depth=2, seed=2024, max_executions=runs)
    hits = len(explore(s, [racy_inc(pad), racy_inc(pad)], lost_update))
    bound = s.per_run_probability()
    assert s.k == 2 * (2 * pad + 2) - 1  # every step but the last has a choice
    # Deterministic (fixed seed); the rate is far above the bound, so half the
    # bound is a floor no correct PCT can miss and a broken one (e.g. no change
    # points, as depth 1 shows) cannot reach.
    assert hits >= runs * bound / 2, (hits, bound)
    cov = s.coverage()
    assert f"{runs} executions" in cov and "n=2 CPUs" in cov and f"k={s.k}" in cov


def test_pct_learns_k_and_samples_change_points_in_range() -> None:
    s = PCT(depth=3, seed=9, default_steps=4, max_executions=30)
    assert s.k == 4
    while s.new_execution():
        points = s.change_points
        assert len(points) == 2 and sorted(points.values()) == [1, 2]
        assert all(1 <= p <= s.k for p in points)
        run_once(s, [steps_only(5), steps_only(5)])
    assert s.k == 9  # 10 steps, the last has no choice


def test_pct_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PCT(depth=0)
    with pytest.raises(ValueError):
        PCT(default_steps=0)


def test_pct_and_random_vary_the_workload_seed() -> None:
    s = PCT(2, seed=1, workload_seed=100, max_executions=3)
    seeds = []
    while s.new_execution():
        seeds.append(s.workload_seed)
    assert seeds == [100, 101, 102]
    r = RandomWalk(1, workload_seed=7, vary_workload=False, max_executions=2)
    assert r.new_execution() and r.workload_seed == 7
    assert r.new_execution() and r.workload_seed == 7


# -- DFS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [(2, 2), (3, 2), (2, 2, 1), (1, 1, 1)])
@pytest.mark.parametrize("bound", [0, 1, 2, None])
def test_dfs_enumerates_exactly_the_bounded_interleavings(
    counts: tuple[int, ...], bound: int | None
) -> None:
    s = DFS(preemption_bound=bound)
    seen = []
    while s.new_execution():
        seen.append(run_once(s, [steps_only(n) for n in counts]).steps)
    expected = brute_force(counts, bound)
    # Invariant: each bounded interleaving exactly once, nothing else.
    assert len(seen) == len(set(seen))
    assert set(seen) == expected
    assert s.exhausted
    if bound is None:
        multinomial = factorial(sum(counts))
        for n in counts:
            multinomial //= factorial(n)
        assert len(seen) == multinomial


def test_dfs_known_tree_sizes() -> None:
    # Two CPUs with two steps each: 6 interleavings. No preemption: 0011 and
    # 1100. One preemption adds 0110 and 1001 (switch away, run the other to
    # completion, come back); 0101 and 1010 need two or three.
    def count(bound: int | None) -> int:
        s = DFS(preemption_bound=bound)
        explore(s, [steps_only(2), steps_only(2)], lambda m: False)
        return s.executions

    assert count(0) == 2
    assert count(1) == 4  # 0011 1100 0110 1001
    assert count(None) == 6


def test_dfs_bound_0_misses_the_race_and_is_exhausted() -> None:
    s = DFS(preemption_bound=0)
    assert explore(s, [racy_inc(), racy_inc()], lost_update) == []
    assert s.exhausted
    assert s.executions == 2
    assert "exhausted" in s.coverage() and "NOT" not in s.coverage()
    assert s.new_execution() is False


def test_dfs_bound_1_finds_the_race() -> None:
    s = DFS(preemption_bound=1)
    failing = explore(s, [racy_inc(), racy_inc()], lost_update)
    assert failing
    assert s.exhausted
    for r in failing:
        # Both loads before either store.
        assert Schedule("toy", 2, 1, 1, 1, 0, r.steps).preemptions() == 1


def test_dfs_budget_stops_before_exhaustion() -> None:
    s = DFS(preemption_bound=None, max_executions=3)
    explore(s, [steps_only(2), steps_only(2)], lambda m: False)
    assert s.executions == 3 and not s.exhausted
    assert "NOT exhausted" in s.coverage()


def test_dfs_blocked_cpu_switch_is_not_a_preemption() -> None:
    # Under the lock nothing can race: DFS with bound 0 must still explore the
    # lock hand-overs (switching away from a blocked CPU is free) and find no bug.
    s = DFS(preemption_bound=0)
    assert explore(s, [locked_inc, locked_inc], lost_update) == []
    assert s.exhausted
    s1 = DFS(preemption_bound=2)
    assert explore(s1, [locked_inc, locked_inc], lost_update) == []
    assert s1.executions > s.executions


def test_dfs_reports_nondeterminism() -> None:
    runs = itertools.count()

    def flaky(cpu: int, m: Machine, s: Scheduler) -> Iterator[str | None]:
        # CPU 1 has a different number of steps in every execution.
        for _ in range(1 if cpu == 0 else 2 + next(runs) % 2):
            yield None

    s = DFS(preemption_bound=None)
    with pytest.raises(Nondeterminism, match=r"not deterministic|before the"):
        explore(s, [flaky, flaky], lambda m: False)


def test_dfs_reports_a_changed_runnable_set() -> None:
    s = DFS(preemption_bound=None)
    assert s.new_execution()
    s.next_cpu([0, 1], None)
    s.next_cpu([0, 1], 0)
    s.next_cpu([1], 0)
    assert s.new_execution()
    s.next_cpu([0, 1], None)
    with pytest.raises(Nondeterminism, match=r"runnable \[1\]"):
        s.next_cpu([1], 0)


def test_dfs_uses_one_fixed_data_stream() -> None:
    s = DFS(preemption_bound=None, workload_seed=5)
    streams = []
    while s.new_execution():
        streams.append([s.next_u64() for _ in range(3)])
        run_once(s, [steps_only(1), steps_only(1)])
    assert len(streams) == 2 and streams[0] == streams[1]


# -- replay ---------------------------------------------------------------------------


def test_replay_reproduces_steps_data_and_outcome() -> None:
    programs: list[Program] = [data_inc, data_inc, data_inc]
    s = RandomWalk(seed=3, max_executions=50)
    recorded = []
    while s.new_execution():
        r = run_once(s, programs)
        recorded.append((Schedule("toy", 3, 1, 1, 1, s.workload_seed, r.steps), r))
    for sched, original in recorded:
        rp = Replay(Schedule.parse(sched.encode()), times=3)
        while rp.new_execution():
            again = run_once(rp, programs)
            assert again.steps == original.steps
            assert again.machine == original.machine
            assert rp.beyond_recorded == 0
        assert rp.executions == 3


def test_replay_mismatch_is_a_clear_error() -> None:
    sched = Schedule("toy", 2, 1, 1, 1, 0, (0, 0, 0))
    rp = Replay(sched)
    assert rp.new_execution()
    with pytest.raises(
        ScheduleMismatch, match=r"step 2: the schedule grants cpu 0, but only \[1\]"
    ):
        run_once(rp, [racy_inc(), racy_inc()])


def test_replay_continues_without_preemption_after_the_recording() -> None:
    rp = Replay(Schedule("toy", 2, 1, 1, 1, 0, (0, 1)))
    assert rp.new_execution()
    r = run_once(rp, [racy_inc(), racy_inc()])
    assert r.steps == (0, 1, 1, 0)
    assert rp.beyond_recorded == 2
    assert lost_update(r.machine)
    assert rp.new_execution() is False


# -- lookahead: promises about the next decisions ------------------------------------


def _decisions(s: Scheduler, programs: list[Program], probe: bool) -> list[tuple[object, ...]]:
    """Every execution as (runnable, choice, promised run) per decision; ``probe`` asks
    ``lookahead`` at every decision (its answer must not change any decision)."""
    out: list[tuple[object, ...]] = []
    assert isinstance(s, BaseScheduler)
    inner = s.next_cpu

    def asking(runnable, current, pending=None):  # type: ignore[no-untyped-def]
        cpu = inner(runnable, current, pending)
        k = s.lookahead(runnable, cpu, 6) if probe and len(runnable) > 1 else None
        out.append((tuple(sorted(runnable)), cpu, k))
        return cpu

    s.next_cpu = asking  # type: ignore[method-assign]
    while s.new_execution():
        out.append(("execution",))
        run_once(s, programs)
    return out


def _kept(log: list[tuple[object, ...]]) -> None:
    """Each promise of k more steps holds while the runnable set stays the same."""
    for i, rec in enumerate(log):
        if len(rec) != 3 or rec[2] is None:
            continue
        runnable, cpu, k = rec
        for t in range(1, k + 1):  # type: ignore[operator]
            nxt = log[i + t] if i + t < len(log) else ("execution",)
            if len(nxt) != 3 or nxt[0] != runnable or log[i + t - 1][1] != cpu:
                break
            assert nxt[1] == cpu, f"decision {i}: promised {k} more for cpu {cpu}, broke at {t}"


LOOKAHEAD_MAKERS: list[Callable[[], BaseScheduler]] = [
    lambda: RandomWalk(seed=4, max_executions=60),
    lambda: PCT(2, seed=4, max_executions=60),
    lambda: PCT(3, seed=4, max_executions=60),
    lambda: DFS(2, max_executions=60),
    lambda: DPOR(max_executions=60),
    lambda: Portfolio(4, max_executions=60),
    lambda: Replay(Schedule("toy", 3, 1, 1, 1, 0, (0, 0, 1, 1, 1, 0, 2, 2, 0)), times=2),
]


@pytest.mark.parametrize("make", LOOKAHEAD_MAKERS, ids=lambda m: m().name)
def test_lookahead_promises_hold_and_change_nothing(make: Callable[[], BaseScheduler]) -> None:
    programs: list[Program] = [steps_only(5), racy_inc(2), locked_inc]
    asked = _decisions(make(), programs, probe=True)
    _kept(asked)
    plain = _decisions(make(), programs, probe=False)
    assert [r[:2] for r in asked] == [r[:2] for r in plain]
    assert any(isinstance(r[2], int) and r[2] > 0 for r in asked if len(r) == 3)


def test_pos_promises_nothing_and_dpor_only_its_prefix() -> None:
    pos = POS(1)
    assert pos.new_execution()
    cpu = pos.next_cpu([0, 1], None, {0: EVERYTHING, 1: EVERYTHING})
    assert pos.lookahead([0, 1], cpu, 10) == 0
    dpor = DPOR()
    programs: list[Program] = [steps_only(3), steps_only(3)]
    assert dpor.new_execution()
    run_once(dpor, programs)  # the first execution has no prefix: nothing promised
    assert dpor.new_execution()
    first = dpor.next_cpu([0, 1], None, {0: EVERYTHING, 1: EVERYTHING})
    promised = dpor.lookahead([0, 1], first, 10)
    assert 0 < promised < 10  # the prefix is shorter than the execution


def test_splitmix_ahead_takes_nothing() -> None:
    r = SplitMix64(9)
    stream = [r.next_u64() for _ in range(8)]
    r = SplitMix64(9)
    assert r.ahead(4) == stream[:4]
    assert r.ahead(6) == stream[:6]  # longer than what was read ahead before
    assert r.next_u64() == stream[0]
    assert r.ahead(1) == [stream[1]]
    r.skip(2)  # numbers already read ahead are taken by skip
    assert [r.next_u64() for _ in range(5)] == stream[3:]


@pytest.mark.parametrize(
    "make",
    [lambda: RandomWalk(seed=6), lambda: PCT(3, seed=6), lambda: Portfolio(6), lambda: DFS(2)],
    ids=["random", "pct", "portfolio", "dfs"],
)
def test_follow_is_n_decisions_at_once(make: Callable[[], BaseScheduler]) -> None:
    for n in (1, 3, 12):
        one, bulk = make(), make()
        assert one.new_execution() and bulk.new_execution()
        runnable = [0, 1, 2]
        choices = [one.next_cpu(runnable, 1) for _ in range(n)]
        leading = next((i for i, c in enumerate(choices) if c != 1), n)
        assert bulk.follow([(runnable, 1)] * n, 1) == leading
        made = leading + 1 if leading < n else n
        # Invariant: follow keeps the books next_cpu keeps, and the next decisions agree.
        assert bulk.steps == one.steps[:made]
        assert bulk.total_steps == made and bulk.cpus_seen == one.cpus_seen
        if made == n:
            assert [bulk.next_cpu(runnable, 1) for _ in range(8)] == [
                one.next_cpu(runnable, 1) for _ in range(8)
            ]


@pytest.mark.parametrize("make", [lambda: RandomWalk(seed=6), lambda: Portfolio(6)])
def test_uniform_numbers_decide_as_the_walk_does(make: Callable[[], BaseScheduler]) -> None:
    """The numbers a stream carries, picked with by uniform_pick over changing
    runnable sets, are the walk's decisions; ``follow`` makes them at once with
    the books next_cpu keeps, and changes nothing after."""
    sets = [[0, 1, 2], [0, 2], [1], [0, 1], [0, 1, 2], [2, 1]] * 3
    one, bulk = make(), make()
    assert one.new_execution() and bulk.new_execution()
    if bulk.uniform_numbers(1) is None:  # a portfolio member that is not the walk
        return
    numbers = bulk.uniform_numbers(len(sets))
    assert numbers is not None and len(numbers) == len(sets)
    assert bulk.steps == [] and bulk.uniform_numbers(len(sets)) == numbers  # nothing taken
    made = [sorted(r)[uniform_pick(x, len(r))] for r, x in zip(sets, numbers, strict=True)]
    current = None
    for r, want in zip(sets, made, strict=True):
        current = one.next_cpu(r, current)
        # Invariant: the uniform rule over the numbers is the walk's decision.
        assert current == want
    assert bulk.follow(list(zip(sets, made, strict=True)), 0) == len(sets)
    assert bulk.steps == one.steps and bulk.total_steps == one.total_steps
    assert bulk.cpus_seen == one.cpus_seen
    assert [bulk.next_cpu([0, 1, 2], 1) for _ in range(8)] == [
        one.next_cpu([0, 1, 2], 1) for _ in range(8)
    ]
    # A decision that differs from the rule is caught where it is.
    wrong = list(zip(sets, made, strict=True))
    wrong[4] = (wrong[4][0], next(o for o in wrong[4][0] if o != made[4]))
    other = make()
    assert other.new_execution()
    assert other.follow(wrong, 0) == 4


def test_uniform_pick_is_fair_and_rejects_the_tail() -> None:
    assert [uniform_pick(x, 3) for x in range(6)] == [0, 1, 2, 0, 1, 2]
    assert uniform_pick(2**64 - 1, 3) == -1  # 2**64 is not a multiple of 3
    assert uniform_pick(2**64 - 1, 2) == 1
    for n in range(1, 9):
        assert uniform_pick(below_limit(n) - 1, n) == (below_limit(n) - 1) % n
