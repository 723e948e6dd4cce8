"""Complete verdicts: explore with no strategy flags reports exactly the kinds an exhaustive
DPOR search finds for the same scenario, and each one with a replayable schedule.

The scenario is 2 CPUs x 1 round: there DPOR exhausts every class in seconds on
this 2-core machine, so its kind set is a proof, computed here, not a copy.
"""

from __future__ import annotations

import pytest

import shmpamt.api as api


@pytest.mark.parametrize("variant", ["rfc", "kai", "rfc-norecheck"])
def test_default_explore_finds_every_kind_dpor_proves(variant: str) -> None:
    proof = api.explore(variant, strategy="dpor", rounds=1, budget=120.0, minimize=False, seed=1)
    assert proof.raw.explore is not None and proof.raw.explore.claim == "verified", (
        proof.raw.coverage
    )
    default = api.explore(variant, rounds=1, seed=1)  # the default strategy and budget
    # Invariant: the default search misses no kind that exists, and invents none.
    assert default.found == proof.found, (default.raw.coverage, proof.raw.coverage)
    assert {f.kind for f in default.findings} == set(default.found)
    for f in default.findings:
        assert f.kind in api.replay(f.schedule).found, f


@pytest.mark.parametrize("variant", ["locked", "v6", "v6-locked"])
def test_correct_variants_are_verified_clean(variant: str) -> None:
    r = api.explore(variant, strategy="dpor", rounds=1, budget=120.0, seed=1)
    assert r.clean and r.raw.explore is not None and r.raw.explore.claim == "verified"
    assert "verified: all" in r.raw.coverage
