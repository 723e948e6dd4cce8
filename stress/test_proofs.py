"""Complete verdicts at the default scenario (2 CPUs x 2 rounds): minutes, not seconds.

Run from the repo root: ``pytest -p no:randomly -o faulthandler_timeout=0
stress/test_proofs.py`` (each test uses both cores through ``jobs=2``, so run
it without xdist). The fast suite holds the same claims at 2 CPUs x 1 round
(``tests/test_completeness.py``); here DPOR's proofs take one to three minutes
per buggy variant on a 2-core machine, which is why they live with the other
slow suites.
"""

from __future__ import annotations

import pytest

import shmpamt.api as api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.mark.parametrize("variant", ["rfc", "kai", "rfc-norecheck"])
def test_default_explore_reports_exactly_what_dpor_proves_at_2x2(variant: str) -> None:
    proof = api.explore(variant, strategy="dpor", jobs=2, budget=900.0, minimize=False, seed=1)
    assert proof.raw.explore is not None and proof.raw.explore.claim == "verified", (
        proof.raw.coverage
    )
    default = api.explore(variant, seed=1, jobs=2)  # no strategy flags: the portfolio, 20 s
    # Invariant: the default search misses no kind that exists, and invents none.
    assert default.found == proof.found, (default.raw.coverage, proof.raw.coverage)
    for f in default.findings:
        assert f.kind in api.replay(f.schedule).found, f


@pytest.mark.parametrize("variant", ["locked", "v6"])
@pytest.mark.parametrize(("cpus", "rounds"), [(2, 2), (3, 1)])
def test_correct_variants_are_verified_clean(variant: str, cpus: int, rounds: int) -> None:
    r = api.explore(variant, strategy="dpor", cpus=cpus, rounds=rounds, jobs=2, budget=300.0)
    assert r.raw.explore is not None and r.raw.explore.claim == "verified", r.raw.coverage
    assert r.clean and not r.incidents
