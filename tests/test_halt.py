"""DPOR that ends each execution's search at its first violation, against brute force.

Toys (no processes): threads of steps on shared variables, some of which log a
kind when the values they read satisfy a condition (as the module logs a
violation from the state a SEAMCALL touches). Brute force runs every
interleaving to its end. The halting search must find exactly the kinds that
some interleaving logs at its first violating step, and whatever else it
reports must be a kind brute force saw somewhere. On the real processes the
same holds against bounded DFS at 2 CPUs x 1 round and 3 CPUs x 1 round, and
at 2 x 2 the halting proof gives the full proof's verdict for the buggy
built-ins it can afford here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import shmpamt.api as api
from shmpamt.schedulers.base import Access, SleepBlocked
from shmpamt.schedulers.dpor import DPOR, HALT_RULE
from shmpamt.schedulers.registry import FAULT_SEARCH_ENV
from shmpamt.schedulers.symmetry import Symmetry

Vars = dict[str, int]


@dataclass(frozen=True)
class Step:
    """Reads ``src``, writes ``dst`` (``dst = f(src)``); logs ``kind`` if ``alarm(src)``."""

    src: str
    dst: str | None
    f: Callable[[int], int] = lambda v: v
    kind: str | None = None
    alarm: Callable[[int], bool] = lambda v: False


Program = list[list[Step]]
IDS = {"x": 0, "y": 1, "z": 2, "p0": 3, "p1": 4, "p2": 5}


def _access(s: Step) -> Access:
    writes = [IDS[s.dst]] if s.dst is not None else []
    return Access.of([IDS[s.src]], writes)


def _step(s: Step, g: Vars) -> str | None:
    v = g[s.src]
    logged = s.kind if s.kind is not None and s.alarm(v) else None
    if s.dst is not None:
        g[s.dst] = s.f(v)
    return logged


def brute_force(prog: Program, init: Vars) -> tuple[set[str], set[str]]:
    """(kinds some interleaving logs at its first violating step, kinds logged at all)."""
    first: set[str] = set()
    every: set[str] = set()

    def go(g: Vars, pcs: list[int], seen: str | None) -> None:
        nonlocal first
        runnable = [c for c in range(len(prog)) if pcs[c] < len(prog[c])]
        if not runnable:
            if seen is not None:
                first.add(seen)
            return
        for c in runnable:
            h = dict(g)
            logged = _step(prog[c][pcs[c]], h)
            if logged is not None:
                every.add(logged)
            nxt = list(pcs)
            nxt[c] += 1
            go(h, nxt, seen if seen is not None else logged)

    go(dict(init), [0] * len(prog), None)
    return first, every


def drive(s: DPOR, prog: Program, init: Vars) -> tuple[set[str], set[str]]:
    """Every execution ``s`` chooses, told of the first violation as the rig's
    controller tells it: (kinds at each execution's first violation, all kinds)."""
    first: set[str] = set()
    every: set[str] = set()
    runs = 0
    while s.new_execution():
        runs += 1
        assert runs < 100_000, "runaway exploration"
        g, pcs = dict(init), [0] * len(prog)
        current: int | None = None
        seen: str | None = None
        outcome = "complete"
        while True:
            parked = [c for c in range(len(prog)) if pcs[c] < len(prog[c])]
            if not parked:
                break
            pending = {c: _access(prog[c][pcs[c]]) for c in parked}
            try:
                c = s.next_cpu(parked, current, pending)
            except SleepBlocked:
                outcome = "sleep-blocked"
                break
            step = prog[c][pcs[c]]
            logged = _step(step, g)
            s.executed(_access(step))
            pcs[c] += 1
            current = c
            if logged is not None:
                every.add(logged)
                if seen is None:
                    seen = logged
                    s.violated(len(s.steps) - 1)
        s.end_execution(outcome, {c: _access(prog[c][pcs[c]]) for c in parked})
        if seen is not None and outcome != "sleep-blocked" and not s.skipped_last:
            first.add(seen)
    assert s.exhausted and s.claim == "verified"
    return first, every


def _random_program(rng: random.Random, cpus: int, length: int) -> Program:
    prog: Program = []
    for c in range(cpus):
        names = ["x", "y", f"p{c}", f"p{c}"]  # a private variable: steps that commute
        thread = []
        for _ in range(length):
            src, dst = rng.choice(names), rng.choice([*names, None])
            add = rng.randrange(1, 3)
            if rng.random() < 0.4:
                value = rng.randrange(0, 4)
                kind = rng.choice("ABCD")
                thread.append(Step(src, dst, lambda v, a=add: (v + a) % 4, kind,
                                   lambda v, t=value: v == t))  # fmt: skip
            else:
                thread.append(Step(src, dst, lambda v, a=add: (v * a + 1) % 4))
        prog.append(thread)
    return prog


INIT = {"x": 0, "y": 1, "z": 2, "p0": 0, "p1": 1, "p2": 2}


@pytest.mark.parametrize("seed", range(200))
def test_halting_finds_every_first_violation_brute_force_finds(seed: int) -> None:
    rng = random.Random(seed)
    cpus = 2 + seed % 2
    prog = _random_program(rng, cpus, 4 if cpus == 2 else 3)
    first, every = brute_force(prog, INIT)
    got_first, got_every = drive(DPOR(halt_at_violation=True), prog, INIT)
    # Invariant: no first violation is lost, and nothing is reported that cannot happen.
    assert got_first == first, (seed, got_first, first)
    assert got_every <= every


@pytest.mark.parametrize("count", [2, 3])
def test_sharded_halting_jobs_together_find_every_first_violation(count: int) -> None:
    for seed in range(10):
        prog = _random_program(random.Random(100 + seed), 3, 3)
        first, _ = brute_force(prog, INIT)
        got: set[str] = set()
        for index in range(count):
            got |= drive(DPOR(halt_at_violation=True, shard=(index, count)), prog, INIT)[0]
        assert got == first, (seed, got, first)


def test_halting_with_symmetry_finds_every_first_violation() -> None:
    # Identical threads: symmetry merges them, the halt must not lose a kind.
    for seed in range(15):
        rng = random.Random(200 + seed)
        thread = _random_program(rng, 1, 4)[0]
        prog = [thread, list(thread), list(thread)]
        first, _ = brute_force(prog, INIT)
        sym = Symmetry(((0, 1, 2),), {})
        got = drive(DPOR(halt_at_violation=True, symmetry=sym), prog, INIT)[0]
        assert got == first, (seed, got, first)


def test_halting_explores_fewer_executions_than_the_full_search() -> None:
    # Two violations early in each thread, long tails after: the tails are not searched.
    alarm = Step("x", "x", lambda v: v + 1, "A", lambda v: v >= 1)
    tail = [Step("y", "y", lambda v: v + 1), Step("z", "z", lambda v: v + 1)]
    prog = [[alarm, *tail, *tail], [alarm, *tail, *tail]]
    halting, full = DPOR(halt_at_violation=True), DPOR()
    assert drive(halting, prog, INIT)[0] == brute_force(prog, INIT)[0] == {"A"}
    drive(full, prog, INIT)
    assert halting.halted > 0
    assert halting.complete_executions < full.complete_executions
    assert "searched only up to their first violation" in halting.coverage()


def test_a_late_violation_report_is_refused() -> None:
    s = DPOR(halt_at_violation=True)
    assert s.new_execution()
    pending = {0: Access.of([0], [0]), 1: Access.of([1], [1])}
    s.next_cpu([0, 1], None, pending)
    s.executed(pending[0])
    s.next_cpu([0, 1], 0, pending)
    with pytest.raises(Exception, match="after deciding"):
        s.violated(0)


# -- the real processes ------------------------------------------------------------------


def _first_kinds(variant: str, strategy: str, **kw: object) -> tuple[set[str], set[str], object]:
    kw.setdefault("faults", "none")
    r = api.explore(variant, strategy=strategy, jobs=1, minimize=False, seed=1, budget=300.0,
                    **kw)  # type: ignore[arg-type]  # fmt: skip
    assert r.raw.explore is not None and not r.incidents
    return set(r.found), set(r.raw.explore.reductions), r


@pytest.mark.parametrize("variant", ["rfc", "kai", "rfc-norecheck", "rfc-early-publish"])
def test_halting_proves_the_kinds_of_2_cpus_x_1_round(variant: str) -> None:
    brute, _, _ = _first_kinds(variant, "dfs", cpus=2, rounds=1, preemptions=3)
    halted, rules, h = _first_kinds(variant, "dpor", cpus=2, rounds=1, halt_at_violation=True)
    assert h.raw.explore.claim == "verified" and HALT_RULE in rules  # type: ignore[attr-defined]
    # At one round each kind brute force finds is some execution's first.
    assert brute and halted == brute, (brute, halted)


@pytest.mark.parametrize("variant", ["rfc", "v6"])
def test_halting_proves_the_kinds_of_3_cpus_x_1_round(variant: str) -> None:
    brute, _, _ = _first_kinds(variant, "dfs", cpus=3, rounds=1, preemptions=1)
    full, _, _ = _first_kinds(variant, "dpor", cpus=3, rounds=1)
    halted, _, _ = _first_kinds(variant, "dpor", cpus=3, rounds=1, halt_at_violation=True)
    assert brute <= halted == full, (brute, full, halted)


@pytest.mark.parametrize("variant", ["rfc", "v4"])
def test_halting_keeps_the_2_x_2_verdict(variant: str) -> None:
    full, _, f = _first_kinds(variant, "dpor", cpus=2, rounds=2)
    halted, _, h = _first_kinds(variant, "dpor", cpus=2, rounds=2, halt_at_violation=True)
    assert full and halted == full, (full, halted)
    ran = h.raw.explore.executions  # type: ignore[attr-defined]
    assert ran < 0.7 * f.raw.explore.executions  # type: ignore[attr-defined]


def test_halting_is_a_dpor_option() -> None:
    with pytest.raises(api.UsageError, match="dpor"):
        api.explore("rfc", strategy="random", halt_at_violation=True, executions=1)


def test_independent_violations_of_two_cpus_are_both_first() -> None:
    # Neither step touches what the other does; whichever runs first halts the search,
    # so the halt itself must count as a conflict with the other CPU's next step.
    a = Step("x", None, kind="A", alarm=lambda v: True)
    b = Step("y", None, kind="B", alarm=lambda v: True)
    prog = [[a], [b]]
    assert brute_force(prog, INIT)[0] == {"A", "B"}
    assert drive(DPOR(halt_at_violation=True), prog, INIT)[0] == {"A", "B"}


@pytest.mark.parametrize("variant", ["rfc-norecheck", "kai"])
def test_halting_with_faults_as_outcomes_keeps_the_verdict(variant: str) -> None:
    # Injected outcomes branch at nodes up to the halt only; what follows is one schedule.
    kw = dict(cpus=2, rounds=1, faults="*.busy=1,alloc.fail=1", max_faults=1)
    full, _, f = _first_kinds(variant, "dpor", **kw)
    halted, rules, h = _first_kinds(variant, "dpor", halt_at_violation=True, **kw)
    assert HALT_RULE in rules and h.raw.explore.claim == "verified"  # type: ignore[attr-defined]
    assert full and halted == full, (full, halted)
    assert h.raw.explore.executions < f.raw.explore.executions  # type: ignore[attr-defined]


def test_halting_reaches_the_fault_tree_of_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tree-per-plan fault search wraps its DPOR: the halt must reach the one inside.
    monkeypatch.setenv(FAULT_SEARCH_ENV, "plans")
    kw = dict(cpus=2, rounds=1, faults="*.busy=1,alloc.fail=1", max_faults=1)
    full, _, f = _first_kinds("rfc-norecheck", "dpor", **kw)
    halted, _, h = _first_kinds("rfc-norecheck", "dpor", halt_at_violation=True, **kw)
    assert full and halted == full, (full, halted)
    assert h.raw.explore.executions < f.raw.explore.executions  # type: ignore[attr-defined]


def _halted_count(r: object) -> int:
    found = re.findall(r"(\d+) searched only up to their first violation", r.raw.coverage)  # type: ignore[attr-defined]
    assert len(found) == 1, r.raw.coverage  # type: ignore[attr-defined]
    return int(found[0])


def test_an_ignored_kind_does_not_end_the_search() -> None:
    # rfc treats add_present as an expected race: with --ignore the search runs past it
    # and halts at the first kind that counts (a different tree, the same verdict).
    kw = dict(cpus=2, rounds=1)
    ig = frozenset({"add_present"})
    full, _, _ = _first_kinds("rfc", "dpor", ignore=ig, **kw)
    plain, _, p = _first_kinds("rfc", "dpor", halt_at_violation=True, **kw)
    past, _, h = _first_kinds("rfc", "dpor", halt_at_violation=True, ignore=ig, **kw)
    assert past == full == plain == {"add_present", "remove_absent"}
    assert _halted_count(h) != _halted_count(p)
    assert h.raw.explore.executions > p.raw.explore.executions  # type: ignore[attr-defined]
