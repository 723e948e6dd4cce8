"""Controlled scheduling over real processes: finds slips, replays exactly, minimises."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from cli_run import shmpamt_cli

from shmpamt.config import ExploreConfig, Scenario
from shmpamt.explorer.search import run_explore, shrink
from shmpamt.explorer.session import Session
from shmpamt.records.execution import Execution
from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers.dfs import DFS

#: each planted slip, and the violation kind that only it causes among the rfc family
SLIPS = {
    "rfc-norecheck": "remove_while_in_use",
    "rfc-early-publish": "use_without_pamt",
    "rfc-leak-on-lost-race": "pamt_pages_lost",
}


@pytest.mark.parametrize("variant", sorted(SLIPS))
def test_random_walk_finds_each_slip_by_its_own_kind(variant: str) -> None:
    """Each mutant shows the kind its slip causes; rfc itself, same seed, never does."""
    cfg = dict(strategy="random", seed=11, executions=400, minimize=False)
    res = run_explore(ExploreConfig(variant, **cfg))  # type: ignore[arg-type]
    assert SLIPS[variant] in res.failing, (res.coverage, res.found)
    assert any(f.kind == SLIPS[variant] for f in res.findings)
    original = run_explore(ExploreConfig("rfc", **cfg))  # type: ignore[arg-type]
    # Invariant: the kind that proves the slip is one the original does not produce.
    assert SLIPS[variant] not in original.found, original.found


def test_locked_has_no_violation_in_any_bounded_schedule() -> None:
    res = run_explore(
        ExploreConfig("locked", rounds=1, strategy="dfs", preemptions=1, executions=3000)
    )
    assert res.clean, res.to_dict()
    # DFS says whether it covered the whole bounded space.
    assert "exhausted" in res.coverage, res.coverage
    assert res.explore is not None and res.explore.claim == "bounded"


@pytest.fixture(scope="module")
def norecheck_failure() -> Iterator[tuple[Session, Schedule, Execution]]:
    res = run_explore(
        ExploreConfig("rfc-norecheck", seed=3, executions=400, minimize=False, first=True)
    )
    assert res.findings
    f = res.findings[0]
    assert f.execution is not None
    with Session(Scenario("rfc-norecheck")) as s:
        yield s, Schedule.parse(f.schedule), f.execution


def test_replay_reproduces_20_of_20(
    norecheck_failure: tuple[Session, Schedule, Execution],
) -> None:
    session, schedule, found = norecheck_failure
    want = found.first_violation()
    assert want is not None
    for _ in range(20):
        ex = session.replay(Schedule.parse(schedule.encode()))
        # Invariant: the same violation at the same step, every time.
        assert ex.first_violation() == want
        assert ex.steps == found.steps


def test_minimised_schedule_still_fails(
    norecheck_failure: tuple[Session, Schedule, Execution],
) -> None:
    session, schedule, found = norecheck_failure
    want = found.first_violation()
    assert want is not None
    small, ex = shrink(session, schedule, want[0])
    assert len(small.steps) <= len(schedule.steps)
    assert want[0] in session.replay(small).kinds
    assert want[0] in ex.kinds


def test_dfs_replays_prefixes_deterministically() -> None:
    """DFS raises Nondeterminism if a replayed prefix sees other runnable sets."""
    with Session(Scenario("v6", rounds=1)) as s:
        dfs = DFS(preemption_bound=1, max_executions=40)
        n = 0
        while dfs.new_execution():
            s.execute(dfs)
            n += 1
        assert n >= 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return shmpamt_cli(args, timeout=300)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nonsense",
        "s1:rfc:c2.r2.g1.p2.w1:0x3.9",
        "s9:rfc:c2.r2.g1.p2.w1:0x3",
        "s1:no-such-variant:c2.r2.g1.p2.w1:0x3",
    ],
)
def test_replay_rejects_bad_schedules_with_one_line(bad: str) -> None:
    r = _cli("replay", bad)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") <= 1, r.stderr


def test_replay_of_a_schedule_that_does_not_fit_the_variant() -> None:
    # A long single-CPU schedule cannot fit: cpu 0 finishes and stops being runnable.
    r = _cli("replay", "s1:locked:c2.r1.g1.p2.w1:0x400")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "does not fit" in r.stderr and "Traceback" not in r.stderr


def test_explore_cli_end_to_end_writes_json_and_html(tmp_path: object) -> None:
    import json
    from pathlib import Path

    out = Path(str(tmp_path))
    r = _cli(
        "explore",
        "--variant",
        "rfc-early-publish",
        "--executions",
        "300",
        "--seed",
        "5",
        "--json",
        str(out / "r.json"),
        "--html",
        str(out / "t.html"),
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "shmpamt replay s1:rfc-early-publish:" in r.stdout
    data = json.loads((out / "r.json").read_text())
    v = data["variants"][0]
    assert v["verdict"], v
    assert v["schedules"][0]["replay"].startswith("shmpamt replay ")
    html = (out / "t.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "VIOLATION" in html
    # and the printed (minimised) schedule replays to a failure of the same kind
    sched = v["schedules"][0]["schedule"]
    rr = _cli("replay", sched, "--json", str(out / "rr.json"))
    assert rr.returncode == 1, rr.stdout + rr.stderr
    again = json.loads((out / "rr.json").read_text())["variants"][0]
    assert set(again["verdict"]) & set(v["verdict"])


def test_an_abandoned_replay_leaves_the_session_deterministic(
    norecheck_failure: tuple[Session, Schedule, Execution],
) -> None:
    from shmpamt.errors import SchedulingError

    session, schedule, found = norecheck_failure
    # cpu 0 alone for far longer than it has steps: it finishes and stops being runnable
    bad = schedule.with_steps((0,) * 500)
    with pytest.raises(SchedulingError):
        session.replay(bad)
    ex = session.replay(schedule)
    assert ex.first_violation() == found.first_violation()


def test_timeline_values_chain_step_to_step() -> None:
    """With one CPU per step, each atomic's 'before' is the previous atomic's 'after'.

    The kai schedule parks cpu 0 at an atomic while cpu 1 changes that refcount
    thirty times, so a 'before' read at park time instead of at grant time fails here.
    """
    sched = Schedule.parse("s1:kai:c2.r2.g1.p2.w20:1x30.0")
    with Session(Scenario.of(sched)) as session:
        ex = session.replay(sched)
    last: dict[int, int] = {}
    atomics = [s for s in ex.trace if s.op.startswith("atomic")]
    assert len(atomics) > 10
    for s in atomics:
        if s.target in last:
            assert s.before == last[s.target], s
        assert s.after is not None
        last[s.target] = s.after
