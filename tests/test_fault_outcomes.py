"""Fault outcomes as branches inside one DPOR tree (no tree per plan).

On toys with no processes: the outcome-branching DPOR must reach exactly the
(final state, faults injected) pairs that brute force over every schedule x
every outcome choice with at most K injections reaches, and nothing with more
than K; sharded, the jobs' union must be the same. On the rig (2 CPUs x 1
round): it finds every kind the plan-per-tree search finds on the error-path
slips, and none on the correct variants.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from test_fault_choices import TOY, Step, Vars, _set, _take

from shmpamt.schedulers.base import Access, BaseScheduler, Nondeterminism, SleepBlocked
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.faults import KINDS, FaultTree

Program = list[list[Step]]
Seen = set[tuple[tuple[int, ...], int]]


def _final(g: Vars) -> tuple[int, ...]:
    return tuple(g[v] for v in sorted(g))


def brute_force(prog: Program, init: Vars, k: int, kinds: frozenset[int] | None = None) -> Seen:
    """Every (final state, faults injected) over every schedule and outcome choice
    (only ``kinds`` injected, when given)."""
    out: Seen = set()

    def go(g: Vars, locs: list[Vars], pcs: list[int], faults: int) -> None:
        runnable = [c for c in range(len(prog)) if pcs[c] < len(prog[c])]
        if not runnable:
            out.add((_final(g), faults))
            return
        for c in runnable:
            s = prog[c][pcs[c]]
            may = s.kind is not None and faults < k and (kinds is None or s.kind in kinds)
            for inject in (False, True) if may else (False,):
                g2, l2, p2 = dict(g), [dict(x) for x in locs], list(pcs)
                _take(s, g2, l2[c], p2, c, inject)
                go(g2, l2, p2, faults + inject)

    go(dict(init), [{} for _ in prog], [0] * len(prog), 0)
    return out


def drive(
    sched: BaseScheduler,
    prog: Program,
    init: Vars,
    ids: dict[str, int],
    limit: int = 100_000,
    skip: int | None = None,
) -> Seen:
    """Every (final state, faults injected) the strategy's executions reach, driven as
    the rig's session drives it: the plan applied by fault-point index, then the fault
    points reported (by CPU and by step) before ``end_execution``. ``skip``: the CPUs
    ignore an injection planned at this fault point (a broken board, for the check)."""

    def access(s: Step) -> Access:
        return Access.of([ids[v] for v in s.reads], [ids[v] for v in s.writes])

    out: Seen = set()
    for _ in range(limit):
        if not sched.new_execution():
            return out
        g, locs, pcs = dict(init), [{} for _ in prog], [0] * len(prog)
        plan = {c: dict(p) for c, p in sched.board_faults().items()}
        points: dict[int, list[int]] = {c: [] for c in range(len(prog))}
        at: list[tuple[int, int, int, int, bool]] = []
        faults, step = 0, 0
        current: int | None = None
        outcome = "complete"
        while True:
            parked = [c for c in range(len(prog)) if pcs[c] < len(prog[c])]
            if not parked:
                break
            pending = {c: access(prog[c][pcs[c]]) for c in parked}
            try:
                c = sched.next_cpu(parked, current, pending)
            except SleepBlocked:
                outcome = "sleep-blocked"  # a repeat of an explored class
                break
            s = prog[c][pcs[c]]
            inject = False
            if s.kind is not None:
                point = len(points[c])
                inject = bool(plan.get(c, {}).get(point, 0) >> s.kind & 1) and point != skip
                at.append((step, c, point, s.kind, inject))
                points[c].append(s.kind)
            sched.executed(pending[c])
            _take(s, g, locs[c], pcs, c, inject)
            faults += inject
            current, step = c, step + 1
        sched.saw_faults(points)
        sched.saw_fault_steps(at)
        sched.end_execution(outcome, {} if outcome == "complete" else pending)
        if outcome == "complete":
            out.add((_final(g), faults))
    raise AssertionError("the search did not end")


TOY_INIT = {"x": 1, "m": 0, "y": 0}
TOY_IDS = {"x": 0, "m": 1, "y": 2}


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_outcome_branching_reaches_every_outcome_brute_force_reaches(k: int) -> None:
    dpor = DPOR(fault_kinds=KINDS, max_faults=k)
    got = drive(dpor, TOY, TOY_INIT, TOY_IDS)
    assert got == brute_force(TOY, TOY_INIT, k)
    assert dpor.claim == "verified" and dpor.exhausted
    assert dpor.fault_plan == () or k > 0


def _random_program(rng: random.Random, cpus: int, steps: int) -> Program:
    """Threads of random reads, writes and fault points over three shared variables;
    an injected outcome writes something else and may skip the thread's rest."""
    names = ["x", "m", "y"]
    prog: Program = []
    for c in range(cpus):
        thread: list[Step] = []
        for i in range(steps):
            r = rng.choice(names)
            w = rng.choice(names)
            mul = rng.randint(2, 5)
            add = rng.randint(1, 9)
            normal = _set(w, lambda g, loc, r=r, mul=mul, add=add: (g[r] * mul + add) % 97)
            if rng.random() < 0.5:
                fw = rng.choice(names)
                bad = _set(fw, lambda g, loc, r=r, add=add: (g[r] + 50 + add) % 97)
                jump = steps if rng.random() < 0.4 else None
                kind = rng.randrange(len(KINDS))
                # the footprint covers both outcomes, as a SEAMCALL's does on the rig
                thread.append(Step((r,), (w, fw), normal, kind, bad, jump))
            elif rng.random() < 0.3:  # a private step: commutes with everything
                loc = f".l{c}"
                thread.append(Step((), (), _set(loc, lambda g, loc, i=i: i)))
            else:
                thread.append(Step((r,), (w,), normal))
        prog.append(thread)
    return prog


@pytest.mark.parametrize("seed", range(12))
def test_on_random_programs_outcome_branching_equals_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    cpus = 2 + seed % 2
    prog = _random_program(rng, cpus, 3 if cpus == 3 else 4)
    init = {"x": 1, "m": 2, "y": 3}
    ids = {"x": 0, "m": 1, "y": 2}
    for k in (0, 1, 2):
        want = brute_force(prog, init, k)
        assert drive(DPOR(fault_kinds=KINDS, max_faults=k), prog, init, ids) == want
        # the plan-per-tree search agrees (the two are the same scope)
        tree = FaultTree(lambda: DPOR(), KINDS, k)
        assert _drive_tree(tree, prog, init, ids) == want


def _drive_tree(tree: FaultTree, prog: Program, init: Vars, ids: dict[str, int]) -> Seen:
    return drive(tree, prog, init, ids)


@pytest.mark.parametrize("count", [2, 3])
def test_sharded_outcome_branching_covers_brute_force(count: int) -> None:
    want = brute_force(TOY, TOY_INIT, 2)
    got: Seen = set()
    for index in range(count):
        got |= drive(DPOR(shard=(index, count), fault_kinds=KINDS, max_faults=2), TOY, TOY_INIT,
                     TOY_IDS)  # fmt: skip
    assert got == want


def test_only_the_kinds_asked_for_are_branched_on() -> None:
    got = drive(DPOR(fault_kinds=["alloc.fail"], max_faults=1), TOY, TOY_INIT, TOY_IDS)
    assert got == brute_force(TOY, TOY_INIT, 1, frozenset({KINDS.index("alloc.fail")}))
    # the ADD error path (x = a + 10) is never taken, alloc's (y = 7) is
    assert any(state[2] == 7 for state, n in got if n)
    assert not any(state[0] in (11, 22, 111, 122) for state, n in got if n)
    with pytest.raises(ValueError, match="unknown fault kind"):
        DPOR(fault_kinds=["add.slow"], max_faults=1)


def test_an_injection_the_cpus_did_not_apply_is_nondeterminism() -> None:
    # the CPUs drop every injection at their first fault point: the plan's index does
    # not match what they counted, and the search must say so, not go on
    with pytest.raises(Nondeterminism, match="injected"):
        drive(DPOR(fault_kinds=KINDS, max_faults=1), TOY, TOY_INIT, TOY_IDS, skip=0)


def test_the_claim_names_both_scopes() -> None:
    from shmpamt.schedulers.faults import scope

    dpor = DPOR(fault_kinds=KINDS, max_faults=1)
    drive(dpor, TOY, TOY_INIT, TOY_IDS)
    assert dict(dpor.claim_scopes) == {scope(0, ()): "verified", scope(1, KINDS): "verified"}
    assert dpor.no_fault_executions > 0
    assert "the no-fault part exhausted" in dpor.coverage()


# -- the rig: 2 CPUs x 1 round, real processes ------------------------------------------


#: the error-path slips of tests/error_path_variants.py, each v6 but for one slip
SLIPS = [
    f"tests/error_path_variants.py:{name}"
    for name in ("AddResultIgnored", "RemoveFailureWarnsOnly", "AddFailureLeaksPages",
                 "SecondPageLeaks")
]  # fmt: skip


def _kinds(scenario: object, make: Callable[[], BaseScheduler]) -> tuple[set[str], int]:
    from shmpamt.config import Scenario
    from shmpamt.explorer.session import Session

    assert isinstance(scenario, Scenario)
    kinds: set[str] = set()
    sched = make()
    n = 0
    with Session(scenario) as s:
        while sched.new_execution():
            kinds |= s.execute(sched).kinds
            n += 1
    assert sched.claim == "verified"
    return kinds, n


@pytest.mark.parametrize("variant", [*SLIPS, "v6", "locked"])
def test_on_the_rig_branching_finds_what_a_tree_per_plan_finds(variant: str) -> None:
    from shmpamt.config import Scenario

    scenario = Scenario(variant, 2, 1, 1)
    branching, _ = _kinds(scenario, lambda: DPOR(fault_kinds=KINDS, max_faults=1))
    plans, _ = _kinds(scenario, lambda: FaultTree(DPOR, KINDS, 1))
    assert branching == plans
    # the slips are found, the correct variants stay clean
    assert bool(branching) == variant.startswith("tests/")


def test_a_dpor_without_faults_never_says_no_fault_point_was_reached() -> None:
    # (explore reports "no execution reached a fault point" from `reached`; a DPOR that
    # injects nothing, such as a sharded plan search's second job, has nothing to reach)
    assert DPOR().reached
    dpor = DPOR(fault_kinds=KINDS, max_faults=1)
    assert not dpor.reached
    drive(dpor, TOY, TOY_INIT, TOY_IDS)
    assert dpor.reached


# -- symmetry with faults ---------------------------------------------------------------


def _twins(cpus: int, skip_on_null: bool) -> Program:
    """Identical threads: a private fault point (an allocation into the CPU's own slot;
    NULL leaves a different value there, or skips to the end), then a shared
    read-modify-write that reads the slot, then a shared fault point."""
    prog: Program = []
    for c in range(cpus):
        own = f"own{c}"
        prog.append(
            [
                Step(
                    (), (own,), _set(own, lambda g, loc: 1),
                    KINDS.index("alloc.fail"), _set(own, lambda g, loc: 2),
                    3 if skip_on_null else None,
                ),
                Step(("x", own), ("x",), _set("x", lambda g, loc, o=own: (g["x"] * 3 + g[o]) % 97)),
                Step(
                    ("x", "m"), ("m", "x"), _set("m", lambda g, loc: (g["m"] * 5 + g["x"]) % 97),
                    KINDS.index("remove.busy"), _set("x", lambda g, loc: (g["x"] + 40) % 97),
                ),
            ]
        )  # fmt: skip
    return prog


def _shared_only(seen: Seen, names: list[str]) -> set[tuple[tuple[int, ...], int]]:
    """The finals without the CPUs' own slots (which a renaming of CPUs permutes)."""
    keep = [i for i, n in enumerate(sorted(names)) if not n.startswith("own")]
    return {(tuple(final[i] for i in keep), n) for final, n in seen}


@pytest.mark.parametrize("cpus", [2, 3])
@pytest.mark.parametrize("skip_on_null", [False, True])
def test_symmetry_with_fault_branches_reaches_what_brute_force_reaches(
    cpus: int, skip_on_null: bool
) -> None:
    from shmpamt.schedulers.symmetry import Symmetry

    prog = _twins(cpus, skip_on_null)
    init = {"x": 1, "m": 2} | {f"own{c}": 0 for c in range(cpus)}
    ids = {n: i for i, n in enumerate(sorted(init))}
    sym = Symmetry((tuple(range(cpus)),), {c: frozenset({ids[f"own{c}"]}) for c in range(cpus)})
    for k in (0, 1, 2):
        want = _shared_only(brute_force(prog, init, k), list(init))
        plain = DPOR(fault_kinds=KINDS, max_faults=k)
        reduced = DPOR(fault_kinds=KINDS, max_faults=k, symmetry=sym)
        # Invariant: symmetry loses no final state (up to the renamed own slots)
        # and no count of injections that brute force reaches.
        assert _shared_only(drive(plain, prog, init, ids), list(init)) == want
        assert _shared_only(drive(reduced, prog, init, ids), list(init)) == want
        assert reduced.claim == "verified"
        assert reduced.executions < plain.executions, (k, reduced.executions, plain.executions)


@pytest.mark.parametrize("variant", [*SLIPS, "v6"])
def test_on_the_rig_symmetry_with_faults_finds_what_plain_branching_finds(variant: str) -> None:
    from shmpamt.config import Scenario
    from shmpamt.explorer.symmetry import scenario_symmetry

    scenario = Scenario(variant, 2, 1, 1)
    sym = scenario_symmetry(scenario, 0)
    assert sym.reduces  # one range, one round: the two CPUs are one orbit
    plain, n_plain = _kinds(scenario, lambda: DPOR(fault_kinds=KINDS, max_faults=1))
    reduced, n_reduced = _kinds(
        scenario, lambda: DPOR(fault_kinds=KINDS, max_faults=1, symmetry=sym)
    )
    assert reduced == plain
    assert bool(reduced) == variant.startswith("tests/")
    assert n_reduced < n_plain
