"""Faults as choices of the search, on toys with no processes (exact sets) and the rig.

A toy thread is a list of steps; a fault point step has two outcomes, the
normal one and the injected one (an error path that jumps elsewhere). Brute
force enumerates every interleaving x every outcome choice with at most K
injected faults; FaultTree over DPOR (and over DFS) must reach every final state
brute force reaches, and none with more than K faults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.base import Access, BaseScheduler
from shmpamt.schedulers.dfs import DFS
from shmpamt.schedulers.dpor import DPOR
from shmpamt.schedulers.faults import KINDS, MAX_FAULTS, FaultDraw, FaultTree, scope
from shmpamt.schedulers.random_walk import RandomWalk
from shmpamt.schedulers.replay import Replay

Vars = dict[str, int]


@dataclass(frozen=True)
class Step:
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    effect: Callable[[Vars, Vars], None]
    #: a fault point: the kind injected there, what the injected outcome does, and the
    #: pc it jumps to (None: the next one)
    kind: int | None = None
    fault: Callable[[Vars, Vars], None] | None = None
    fault_jump: int | None = None


def _set(var: str, f: Callable[[Vars, Vars], int]) -> Callable[[Vars, Vars], None]:
    def eff(g: Vars, loc: Vars) -> None:
        if var.startswith("."):
            loc[var] = f(g, loc)
        else:
            g[var] = f(g, loc)

    return eff


# Thread 0: a = x; ADD (ok: m += 1, x = a + 1 | busy: x = a + 10, then skips its last
# step); y = x. Thread 1: REMOVE (ok: x = 2x | busy: m -= 5); alloc (ok: x += 100 |
# NULL: y = 7).
TOY: list[list[Step]] = [
    [
        Step(("x",), (), _set(".a", lambda g, loc: g["x"])),
        Step(
            ("m", "x"), ("m", "x"), lambda g, loc: g.update(m=g["m"] + 1, x=loc[".a"] + 1),
            kind=0, fault=_set("x", lambda g, loc: loc[".a"] + 10), fault_jump=3,
        ),
        Step(("x",), ("y",), _set("y", lambda g, loc: g["x"])),
    ],
    [
        Step(
            ("m", "x"), ("m", "x"), _set("x", lambda g, loc: 2 * g["x"]),
            kind=1, fault=_set("m", lambda g, loc: g["m"] - 5),
        ),
        Step(
            ("x",), ("x",), _set("x", lambda g, loc: g["x"] + 100),
            kind=4, fault=_set("y", lambda g, loc: 7),
        ),
    ],
]  # fmt: skip
IDS = {"x": 0, "m": 1, "y": 2}


def _access(s: Step) -> Access:
    return Access.of([IDS[v] for v in s.reads], [IDS[v] for v in s.writes])


def _init() -> tuple[Vars, list[Vars], list[int]]:
    return {"x": 1, "m": 0, "y": 0}, [{} for _ in TOY], [0] * len(TOY)


def _final(g: Vars) -> tuple[int, int, int]:
    return g["x"], g["m"], g["y"]


def brute_force(k: int) -> set[tuple[tuple[int, int, int], int]]:
    """Every (final state, faults injected) over every schedule and outcome choice."""
    out: set[tuple[tuple[int, int, int], int]] = set()

    def go(g: Vars, locs: list[Vars], pcs: list[int], faults: int) -> None:
        runnable = [c for c in range(len(TOY)) if pcs[c] < len(TOY[c])]
        if not runnable:
            out.add((_final(g), faults))
            return
        for c in runnable:
            s = TOY[c][pcs[c]]
            for inject in (False, True) if s.kind is not None and faults < k else (False,):
                g2, l2, p2 = dict(g), [dict(x) for x in locs], list(pcs)
                _take(s, g2, l2[c], p2, c, inject)
                go(g2, l2, p2, faults + inject)

    go(*_init(), 0)
    return out


def _take(s: Step, g: Vars, loc: Vars, pcs: list[int], c: int, inject: bool) -> None:
    if inject:
        assert s.fault is not None
        s.fault(g, loc)
        pcs[c] = s.fault_jump if s.fault_jump is not None else pcs[c] + 1
    else:
        s.effect(g, loc)
        pcs[c] += 1


def run_toy(sched: BaseScheduler, limit: int = 10_000) -> set[tuple[tuple[int, int, int], int]]:
    """Every (final state, faults injected) the strategy's executions reach."""
    return set(each_run(sched, limit))


def each_run(sched: BaseScheduler, limit: int = 10_000) -> list[tuple[tuple[int, int, int], int]]:
    """(final state, faults injected) of each execution, as the rig's controller and
    hook would drive the strategy (the plan applied by fault point)."""
    out: list[tuple[tuple[int, int, int], int]] = []
    for _ in range(limit):
        if not sched.new_execution():
            return out
        g, locs, pcs = _init()
        plan = {c: dict(p) for c, p in sched.board_faults().items()}
        points: dict[int, list[int]] = {c: [] for c in range(len(TOY))}
        faults = 0
        current: int | None = None
        while True:
            parked = [c for c in range(len(TOY)) if pcs[c] < len(TOY[c])]
            if not parked:
                break
            pending = {c: _access(TOY[c][pcs[c]]) for c in parked}
            c = sched.next_cpu(parked, current, pending)
            s = TOY[c][pcs[c]]
            inject = False
            if s.kind is not None:
                inject = bool(plan.get(c, {}).get(len(points[c]), 0) >> s.kind & 1)
                points[c].append(s.kind)
            sched.executed(pending[c])
            _take(s, g, locs[c], pcs, c, inject)
            faults += inject
            current = c
        sched.end_execution("complete", {})
        sched.saw_faults(points)
        out.append((_final(g), faults))
    raise AssertionError("the search did not end")


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("inner", ["dpor", "dfs"])
def test_the_fault_tree_reaches_every_outcome_brute_force_reaches(inner: str, k: int) -> None:
    make = (lambda: DPOR()) if inner == "dpor" else (lambda: DFS(preemption_bound=None))
    tree = FaultTree(make, KINDS, k)
    got = run_toy(tree)
    want = brute_force(k)
    assert got == want
    assert tree.claim == "verified" and tree.exhausted
    # more faults reach more states: the toy's error paths matter
    if k:
        assert want - brute_force(k - 1)


def test_only_the_kinds_asked_for_are_injected() -> None:
    got = run_toy(FaultTree(DPOR, ["alloc.fail"], 1))
    # alloc.fail alone: y = 7 is reachable, the ADD error path (x = a + 10) is not
    assert any(state[2] == 7 for state, _ in got)
    assert not any(state[0] in (11, 22, 111, 122) for state, n in got if n)
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultTree(DPOR, ["add.slow"], 1)
    with pytest.raises(ValueError, match="max_faults"):
        FaultTree(DPOR, KINDS, MAX_FAULTS + 1)


def test_the_claim_names_its_scope() -> None:
    tree = FaultTree(DPOR, KINDS, 1)
    run_toy(tree)
    scopes = dict(tree.claim_scopes)
    assert scopes == {
        "with no injected fault": "verified",
        scope(1, KINDS): "verified",
    }
    assert "with <= 1 injected fault (add.busy, remove.busy, aug.busy" in tree.coverage()


def test_sampling_draws_with_the_spec_probabilities_and_at_most_k() -> None:
    never = FaultDraw(RandomWalk(seed=3, max_executions=300), {"add.busy": 0.0}, 1)
    assert all(n == 0 for _, n in run_toy(never))
    always = FaultDraw(RandomWalk(seed=3, max_executions=300), dict.fromkeys(KINDS, 1.0), 2)
    got = each_run(always)
    # the first execution shows the fault points; after it every point would fire at
    # p = 1, and exactly K = 2 of the toy's 3 points do, always
    assert got[0][1] == 0 and {n for _, n in got[1:]} == {2}
    some = FaultDraw(RandomWalk(seed=3, max_executions=400), {"remove.busy": 0.5}, 1)
    counts = [n for _, n in each_run(some)[1:]]
    assert set(counts) == {0, 1}
    # REMOVE is reached in every execution: about half of them inject it
    assert 0.35 < sum(counts) / len(counts) < 0.65


def test_replay_injects_the_schedule_s_faults() -> None:
    s = Schedule("toy", 2, 1, 1, 1, 0, (0, 0, 1, 1, 0), faults=((1, 0, 1),))
    replay = Replay(s)
    assert replay.board_faults() == {1: [(0, 2)]}
    ((state, n),) = run_toy(replay)
    # cpu 0: a = 1; ADD ok: m = 1, x = 2; cpu 1: REMOVE refused: m = -4; x += 100
    assert (state, n) == ((102, -4, 102), 1)


# -- the rig: 2 CPUs x 1 round, real processes ------------------------------------------

POINTS = 10  # fault points per CPU the blind search covers (2 x 1 reaches fewer)


def _kinds_of_search(session: object, sched: BaseScheduler) -> set[str]:
    from shmpamt.explorer.session import Session

    assert isinstance(session, Session)
    kinds: set[str] = set()
    while sched.new_execution():
        kinds |= session.execute(sched).kinds
    return kinds


@pytest.mark.parametrize("cls", ["RemoveFailureWarnsOnly", "AddFailureLeaksPages"])
def test_on_the_rig_the_fault_tree_finds_every_kind_blind_plans_find(cls: str) -> None:
    """Brute force over outcomes: every (cpu, point < POINTS, kind) injection, seen or
    not, each under a full DPOR search; the fault tree, which only tries what it saw
    reached, must find the same kinds (and some, or the test shows nothing)."""
    from shmpamt.config import Scenario
    from shmpamt.explorer.session import Session
    from shmpamt.schedulers.faults import Injection

    scenario = Scenario(f"tests/error_path_variants.py:{cls}", 2, 1, 1)
    with Session(scenario) as s:
        found = _kinds_of_search(s, FaultTree(DPOR, KINDS, 1))
        blind: set[str] = set()
        for cpu in range(2):
            for point in range(POINTS):
                for kind in range(len(KINDS)):
                    one = FaultTree(DPOR, KINDS, 0)
                    one.plan = (Injection(cpu, point, kind),)  # searched, never grown
                    blind |= _kinds_of_search(s, one)
    assert blind and found == blind


NO_FAULT_POINTS = '''
from shmpamt.variants.base import PamtVariant


class NoFaultPoints(PamtVariant):
    """A get that never allocates nor calls PAMT.ADD; a put that never REMOVEs."""

    name = "no-fault-points"
    initial_refcount = 0

    def tdx_pamt_get(self, k, page):
        return 0

    def tdx_pamt_put(self, k, page):
        return None
'''


def test_faults_no_execution_could_inject_are_an_incident_not_a_clean_search(
    tmp_path: Path,
) -> None:
    from shmpamt import api

    (tmp_path / "nofp.py").write_text(NO_FAULT_POINTS)
    spec = f"{tmp_path / 'nofp.py'}:NoFaultPoints"
    r = api.explore(spec, faults="add.busy=0.5", jobs=1, executions=20, db="off")
    assert any("no execution reached a fault point" in i for i in r.raw.incidents)
    # AUG and RECLAIM are fault points of every round: aug.busy is reached
    r = api.explore(spec, faults="aug.busy=0.5", jobs=1, executions=20, db="off")
    assert not any("no execution reached" in i for i in r.raw.incidents)
