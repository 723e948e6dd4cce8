"""DPOR's symmetry rule against brute force: interchangeable CPUs, one tried first.

Toys (no processes): identical threads, each with private steps on objects of
its own before its shared ones. With symmetry, DPOR must still reach every final
state and every deadlock brute force reaches (the finals here are shared values,
the same whichever CPU did what), with fewer executions. Threads that differ are
never merged. On the real processes, ``tests/test_dpor_processes.py`` runs DPOR
with symmetry (the default) against bounded DFS at 2 CPUs x 1 round; here the
same at 3 CPUs x 1 round, and the kinds with and without symmetry agree.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_dpor import (
    Effect,
    State,
    Step,
    Toy,
    Vars,
    acquire,
    explore,
    get_put,
    locked_inc,
    op,
    racy_inc,
    release,
    write,
)

import shmpamt.api as api
from shmpamt.config import Scenario
from shmpamt.explorer.symmetry import page_pattern, scenario_symmetry
from shmpamt.schedulers import DPOR, Access
from shmpamt.schedulers.symmetry import Symmetry


def padded(thread: list[Step], cpu: int, before: int) -> list[Step]:
    """``before`` private steps on CPU ``cpu``'s own variables, then ``thread`` (its
    jumps moved by as many steps)."""

    def moved(s: Step) -> Step:
        eff = s.effect
        if eff is None:
            return s

        def jump(g: Vars, loc: Vars, eff: Effect = eff) -> int | None:
            target = eff(g, loc)
            return None if target is None else target + before

        return replace(s, effect=jump)

    return [write(f"own{cpu}_{i}", 1) for i in range(before)] + [moved(s) for s in thread]


def get_put_padded(threads: int, before: int, recheck: bool = True) -> Toy:
    return Toy(
        [padded(get_put(recheck), c, before) for c in range(threads)],
        {"rc": 0, "pamt": 0, "bug": 0},
        bug=lambda g: g["bug"] == 1 or (g["rc"] == 0) != (g["pamt"] == 0),
    )


def leaky_lock(threads: int) -> Toy:
    """Each thread takes L and, if it saw x == 1, never drops it: some orders deadlock."""

    def seen(g: Vars, loc: Vars) -> int | None:
        g["x"] += 1
        return 3 if g["x"] == 1 else None  # the first one skips its release

    t = [acquire("L"), op(("x",), ("x",), seen), release("L"), write("y", 1)]
    return Toy([padded(list(t), c, 1) for c in range(threads)], {"x": 0, "y": 0})


TOYS = {
    "get-put-2": lambda: get_put_padded(2, 1),
    "get-put-norecheck-2": lambda: get_put_padded(2, 2, recheck=False),
    "racy-inc-3": lambda: Toy(
        [padded(racy_inc(), c, 1) for c in range(3)], {"x": 0}, bug=lambda g: g["x"] != 3
    ),
    "locked-inc-3": lambda: Toy([padded(locked_inc(), c, 2) for c in range(3)], {"x": 0}),
    "leaky-lock-3": lambda: leaky_lock(3),
}


def reachable(toy: Toy) -> tuple[set, set, bool]:  # type: ignore[type-arg]
    """Brute force over states (a visited set, so 3 threads stay cheap): the final
    shared values without the private ones, the outcomes, and whether a bug is reached."""
    out: set = set()  # type: ignore[type-arg]
    outcomes: set[str] = set()
    bug = False
    seen = set()
    todo = [State(toy)]
    while todo:
        st = todo.pop()
        key = (st.final(), tuple(tuple(sorted(x.items())) for x in st.locals), tuple(st.pcs),
               tuple(sorted(st.holders.items())))  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        parked = st.parked()
        runnable = [c for c in parked if st.enabled(c)]
        if not runnable:
            out.add(tuple(kv for kv in st.final() if not kv[0].startswith("own")))
            outcomes.add("complete" if not parked else "deadlock")
            bug = bug or toy.bug(st.shared)
        for c in runnable:
            nxt = st.copy()
            nxt.run(c)
            todo.append(nxt)
    return out, outcomes, bug


def toy_symmetry(toy: Toy, orbits: tuple[tuple[int, ...], ...]) -> Symmetry:
    ids = toy.ids()
    private = {
        c: frozenset(i for n, i in ids.items() if n.startswith(f"own{c}_"))
        for c in range(len(toy.threads))
    }
    return Symmetry(orbits, private)


def finals(runs: list) -> tuple[set, set, bool]:  # type: ignore[type-arg]
    """(final shared values without the private ones, outcomes, any bug)."""
    done = [r for r in runs if r.outcome != "sleep-blocked"]
    shared = {tuple(kv for kv in r.final if not kv[0].startswith("own")) for r in done}
    return shared, {r.outcome for r in done}, any(r.bug for r in done)


@pytest.mark.parametrize("name", sorted(TOYS))
@pytest.mark.parametrize("count", [1, 2])
def test_symmetry_reaches_every_final_brute_force_reaches(name: str, count: int) -> None:
    toy = TOYS[name]()
    n = len(toy.threads)
    want = reachable(toy)
    sym = toy_symmetry(toy, (tuple(range(n)),))
    plain_runs, sym_runs = [], []
    plain_ex = sym_ex = 0
    for i in range(count):
        plain, reduced = DPOR(shard=(i, count)), DPOR(shard=(i, count), symmetry=sym)
        plain_runs += explore(plain, toy)
        sym_runs += explore(reduced, toy)
        assert plain.exhausted and reduced.exhausted and reduced.claim == "verified"
        plain_ex += plain.complete_executions
        sym_ex += reduced.complete_executions
        assert "symmetry over CPUs" in reduced.coverage()
    # Invariant: a sound reduction reaches every final state and outcome, and every bug.
    assert finals(sym_runs) == want == finals(plain_runs)
    # ... and it is a reduction: the interchangeable CPUs are not all tried first.
    assert sym_ex < plain_ex, (sym_ex, plain_ex)


def test_the_bug_toys_are_not_vacuous() -> None:
    assert reachable(TOYS["racy-inc-3"]())[2]
    assert "deadlock" in reachable(TOYS["leaky-lock-3"]())[1]


def test_different_threads_are_never_merged() -> None:
    """Orbits of one CPU each: exactly the executions of plain DPOR."""
    toy = Toy([padded(locked_inc(), c, 1) for c in range(3)], {"x": 0})
    alone = toy_symmetry(toy, ((0,), (1,), (2,)))
    a, b = DPOR(), DPOR(symmetry=alone)
    explore(a, toy)
    explore(b, toy)
    assert a.complete_executions == b.complete_executions
    assert "symmetry" not in b.coverage()


def test_a_cpu_that_shared_is_no_longer_interchangeable() -> None:
    s = Symmetry(((0, 1, 2),), {c: frozenset({10 + c}) for c in range(3)})
    assert s.pruned([0, 1, 2], shared=0) == {1, 2}
    assert s.pruned([0, 1, 2], shared=0b001) == {2}  # 0 touched shared state: 1 stands for 2
    assert s.pruned([1, 2], shared=0) == {2}  # 0 not enabled (blocked): 1 is the lowest
    assert s.representative(2, [0, 1, 2], 0b001) == 1
    assert s.representative(0, [0, 1, 2], 0b001) == 0
    assert s.is_private(1, Access.of((), [11])) and not s.is_private(1, Access.of((), [10]))
    with pytest.raises(ValueError):
        Symmetry(((0, 1), (1, 2)), {})


def test_orbits_follow_the_workload_page_picks() -> None:
    one = scenario_symmetry(Scenario("v6", cpus=3, rounds=2, ranges=1), seed=1)
    assert one.orbits == ((0, 1, 2),)
    two = Scenario("v6", cpus=3, rounds=3, ranges=2)
    for seed in range(5):
        sym = scenario_symmetry(two, seed)
        for orbit in sym.orbits:
            # Invariant: CPUs of one orbit pick the same ranges in the same pattern.
            assert len({page_pattern(two, seed, c) for c in orbit}) == 1
        assert sorted(c for o in sym.orbits for c in o) == [0, 1, 2]


# -- the real processes ------------------------------------------------------------------

REAL = ["rfc", "v6", "locked"]


@pytest.mark.parametrize("variant", REAL)
def test_symmetry_proves_the_kinds_of_3_cpus_x_1_round(variant: str) -> None:
    kw = dict(cpus=3, rounds=1, jobs=1, minimize=False, seed=1, budget=300.0)
    brute = api.explore(variant, strategy="dfs", preemptions=1, **kw)  # type: ignore[arg-type]
    plain = api.explore(variant, strategy="dpor", symmetry=False, **kw)  # type: ignore[arg-type]
    proof = api.explore(variant, strategy="dpor", **kw)  # type: ignore[arg-type]
    for r in (brute, plain, proof):
        assert r.raw.explore is not None and not r.incidents
    assert brute.raw.explore.claim == "bounded"  # type: ignore[union-attr]
    assert proof.raw.explore.claim == "verified"  # type: ignore[union-attr]
    # Invariant: the reduction loses no kind brute force or plain DPOR finds.
    assert set(brute.found) <= set(proof.found) == set(plain.found), (
        brute.found, plain.found, proof.found,
    )  # fmt: skip
    assert proof.raw.explore.executions < plain.raw.explore.executions  # type: ignore[union-attr]
