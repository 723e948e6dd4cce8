"""Allocations and frees commute on one range: the footprint rule and its premise.

The rule (explorer/footprint.py) is sound only while every allocation is served
from its CPU's own pool partition. These tests pin the rule's scope (one range
only), the pool's count of allocations that were not, and the explorer's refusal
to claim a proof when one was. Its soundness against brute force is the job of
tests/test_dpor_processes.py (2 x 1, every built-in and the pool slips) and
tests/test_symmetry.py (3 x 1), which run with the rule on.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import shmpamt.api as api
from shmpamt.errors import SchedulingError
from shmpamt.explorer.board import OPS
from shmpamt.explorer.footprint import POOL_RULE, Footprints
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.schedulers.base import Access, dependent

ALLOC, FREE = OPS.index("alloc_page"), OPS.index("free_page")


@pytest.fixture
def log() -> Iterator[ViolationLog]:
    lg = ViolationLog.create(capacity=64)
    yield lg
    lg.close()


def test_one_range_makes_allocs_and_frees_touch_nothing() -> None:
    one = Footprints(2, ranges=1)
    assert one.pool_commutes
    # Invariant: with one range the pool is no object of any alloc or free.
    for op, target, cpu in ((ALLOC, -1, 0), (ALLOC, -1, 1), (FREE, 1, 0), (FREE, 0, 1)):
        assert one.of(op, target, cpu) == Access.of()


def test_two_ranges_keep_the_partitions() -> None:
    two = Footprints(2, ranges=2)
    assert not two.pool_commutes
    # CPU 1's alloc against CPU 0's free of a page of partition 1 (pool index 1).
    assert dependent(two.of(ALLOC, -1, 1), two.of(FREE, 1, 0))
    assert not dependent(two.of(ALLOC, -1, 0), two.of(ALLOC, -1, 1))


def test_the_pool_counts_allocations_its_own_partition_could_not_serve(
    log: ViolationLog,
) -> None:
    pool = PamtPagePool.create(4, log, cpus=2)
    try:
        mine = [pool.alloc(0), pool.alloc(0)]
        assert all(h is not None and pool.partition(h) == 0 for h in mine)
        assert pool.strayed == 0
        other = pool.alloc(0)  # partition 0 is empty: a page of partition 1
        assert other is not None and pool.partition(other) == 1
        assert pool.alloc(0) is not None and pool.alloc(0) is None  # the last, then none
        assert pool.strayed == 3 and pool.statistics().strayed == 3
        assert pool.statistics().exhausted == 1
        pool.reset()
        assert pool.strayed == 0
    finally:
        pool.close()


def test_a_strayed_allocation_stops_the_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    """The premise checked: the search fails as a rig failure (the CLI's exit 2), as a
    nondeterministic replay does, and never ends "verified"."""
    monkeypatch.setattr(PamtPagePool, "strayed", property(lambda self: 1))
    with pytest.raises(SchedulingError, match="pool partition empty"):
        api.explore("locked", strategy="dpor", cpus=2, rounds=1, jobs=1, seed=1, minimize=False)


def test_a_random_walk_needs_no_premise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strategies that read no footprint are not stopped by it."""
    monkeypatch.setattr(PamtPagePool, "strayed", property(lambda self: 1))
    r = api.explore(
        "locked", strategy="random", cpus=2, rounds=1, jobs=1, seed=1, executions=20,
        minimize=False,
    )  # fmt: skip
    assert r.ok and not r.incidents, r.incidents


def test_the_claim_names_the_rule_where_the_search_used_it() -> None:
    """A proof says what it rests on: the rule on one range, for a footprint search."""
    one = api.explore("locked", strategy="dpor", cpus=2, rounds=1, jobs=1, seed=1, minimize=False)
    assert one.ok and one.raw.explore is not None and one.raw.explore.claim == "verified"
    assert one.raw.coverage.endswith(f"; with {POOL_RULE}"), one.raw.coverage
    assert one.raw.explore.reductions == ("symmetry over CPUs {0,1}", POOL_RULE)
    two = api.explore(
        "locked", strategy="dpor", cpus=2, rounds=1, ranges=2, jobs=1, seed=1, minimize=False,
        symmetry=False,
    )  # fmt: skip
    assert two.ok and two.raw.explore is not None and two.raw.explore.claim == "verified"
    assert POOL_RULE not in two.raw.coverage and two.raw.explore.reductions == ()
    walk = api.explore(
        "locked", strategy="random", cpus=2, rounds=1, jobs=1, seed=1, executions=5,
        minimize=False,
    )  # fmt: skip
    assert walk.raw.explore is not None and walk.raw.explore.reductions == ()
    assert POOL_RULE not in walk.raw.coverage
