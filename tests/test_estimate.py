"""The estimate of an exhaustive search's tree: share explored, total and time left."""

from __future__ import annotations

import json

import pytest
from test_dpor import TOYS, run_toy

from shmpamt.records.estimate import TreeEstimate, explored_share
from shmpamt.schedulers import DPOR


def test_the_share_of_a_balanced_tree_is_exact() -> None:
    # Two levels of three alternatives each: leaf (1, 2) is the 6th of 9.
    assert explored_share([(1, 3), (2, 3)]) == pytest.approx(6 / 9)
    assert explored_share([]) == 1.0  # a tree of one execution
    assert explored_share([(0, 2)] * 10) == pytest.approx(2**-10)


@pytest.mark.parametrize("name", ["get-put", "locked-inc-3", "readers-writers"])
def test_dpor_share_grows_to_one_and_its_guess_is_near_the_end(name: str) -> None:
    toy = TOYS[name]()
    s = DPOR()
    shares = []
    while s.new_execution():
        run_toy(s, toy)
        shares.append(s.explored_share)
    assert s.exhausted and s.explored_share == 1.0
    # Invariant: a share, in (0, 1] (alternatives a race adds late can lower it).
    assert all(0 < x <= 1 for x in shares)
    half = TreeEstimate.of(shares[len(shares) // 2], len(shares) // 2 + 1, 1.0)
    assert half.executions >= 1 and half.seconds_left >= 0


def test_jobs_combine_into_one_estimate() -> None:
    a = TreeEstimate.of(0.5, 100, 10.0)  # 200 in all
    b = TreeEstimate.of(0.25, 100, 10.0)  # 400 in all
    c = TreeEstimate.combined([a, b], 10.0)
    assert c is not None and c.executions == 600
    assert c.share == pytest.approx(200 / 600) and c.seconds_left == b.seconds_left
    assert TreeEstimate.combined([], 1.0) is None
    assert "of the tree explored" in str(c)


def test_an_unfinished_search_says_how_far_it_got(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shmpamt.api as api

    r = api.explore("v6", strategy="dpor", cpus=3, rounds=2, executions=40, jobs=1, seed=1)
    e = r.raw.explore
    assert e is not None and e.claim == "sampled" and e.estimate is not None
    assert 0 < e.estimate.share < 1 and e.estimate.executions > 40
    assert "of its tree explored (estimate)" in r.raw.coverage
    d = json.loads(json.dumps(r.raw.to_dict()))
    assert d["estimate"]["executions_total"] == e.estimate.executions
