"""Minimisation: smaller, still failing, deterministic, within its checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shmpamt.explorer.minimize import minimize, size_key
from shmpamt.records.schedule_string import Schedule
from shmpamt.schedulers import RandomWalk, Replay, Scheduler, SchedulingError


def _racy(pad: int) -> Iterator[str]:
    """A CPU's steps: private work, load x, store x + 1, private work."""
    for _ in range(pad):
        yield "work"
    yield "load"
    yield "store"
    for _ in range(pad):
        yield "work"


def run_toy(s: Scheduler, cpus: int = 3, pad: int = 3) -> tuple[tuple[int, ...], int]:
    """Run ``cpus`` racy increments under ``s``; returns the steps and the final x."""
    gens = {c: _racy(pad) for c in range(cpus)}
    pending = {c: next(g) for c, g in gens.items()}
    x = 0
    tmp: dict[int, int] = {}
    steps: list[int] = []
    current: int | None = None
    while pending:
        cpu = s.next_cpu(sorted(pending), current)
        steps.append(cpu)
        op = pending[cpu]
        if op == "load":
            tmp[cpu] = x
        elif op == "store":
            x = tmp[cpu] + 1
        try:
            pending[cpu] = next(gens[cpu])
        except StopIteration:
            del pending[cpu]
        current = cpu
    return tuple(steps), x


def fails(schedule: Schedule) -> bool:
    r = Replay(schedule)
    r.new_execution()
    try:
        _, x = run_toy(r, schedule.cpus)
    except SchedulingError:
        return False  # infeasible candidate
    return x != schedule.cpus


def a_long_failure() -> Schedule:
    s = RandomWalk(seed=5, max_executions=500)
    while s.new_execution():
        steps, x = run_toy(s)
        if x != 3:
            return Schedule("toy", 3, 1, 1, 1, s.workload_seed, steps)
    raise AssertionError("random walk found no lost update")


def test_minimize_shrinks_and_still_fails() -> None:
    big = a_long_failure()
    calls = []

    def counted(c: Schedule) -> bool:
        calls.append(c)
        return fails(c)

    small = minimize(big, counted, max_checks=400)
    assert fails(small)
    assert size_key(small) < size_key(big)
    assert len(small.steps) < len(big.steps)
    assert small.context_switches() < big.context_switches()
    # The core of a lost update: one CPU runs up to its load, then one switch to
    # another CPU, whose default continuation loads the same value. (The CPU
    # switched away from only runs again after the recorded steps, so the
    # string-level preemptions() does not count that switch.)
    assert len(small.steps) == 3 + 2 and small.context_switches() == 1
    assert len(calls) <= 400
    assert small.variant == big.variant and small.seed == big.seed


def test_minimize_is_deterministic() -> None:
    big = a_long_failure()
    assert minimize(big, fails, 300) == minimize(big, fails, 300)


def test_minimize_stops_after_its_checks() -> None:
    big = a_long_failure()
    calls = 0

    def counted(c: Schedule) -> bool:
        nonlocal calls
        calls += 1
        return fails(c)

    assert minimize(big, counted, max_checks=0) == big
    assert calls == 0
    r = minimize(big, counted, max_checks=5)
    assert calls <= 5
    assert fails(r)


def test_minimize_reaches_the_core_of_a_synthetic_failure() -> None:
    # Fails iff cpu 0 runs immediately before cpu 1 somewhere: the minimum is (0, 1).
    start = Schedule("syn", 3, 1, 1, 1, 0, (2, 2, 1, 0, 0, 2, 0, 1, 1, 2, 0, 2, 1))

    def pattern(s: Schedule) -> bool:
        return any(a == 0 and b == 1 for a, b in zip(s.steps, s.steps[1:], strict=False))

    assert minimize(start, pattern, max_checks=1000).steps == (0, 1)


def test_minimize_keeps_a_schedule_that_cannot_shrink() -> None:
    s = Schedule("syn", 2, 1, 1, 1, 0, (0, 1))
    assert minimize(s, lambda c: c == s, max_checks=50) == s
    with pytest.raises(ValueError):
        minimize(s, lambda c: True, max_checks=-1)
