"""DPOR's reduction against brute force on the real processes.

Unbounded DFS cannot finish even 2 CPUs x 1 round of ``rfc`` (billions of
interleavings), but DFS with at most 3 preemptions exhausts its space there in
seconds. Every kind that bounded brute force finds must be in the kind set DPOR
proves: a footprint that calls two dependent steps independent would show up
as a kind DPOR misses. The pool-slip variants aim at the footprints' one
verdict-level argument (page transfers by the module against another CPU's
frees).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import shmpamt.api as api

HERE = Path(__file__).resolve().parent
SLIPS = HERE / "pool_slip_variants.py"

VARIANTS = [
    "rfc",
    "kai",
    "v4",
    "v6",
    "locked",
    "rfc-norecheck",
    "rfc-early-publish",
    "rfc-leak-on-lost-race",
    f"{SLIPS}:FreesAddedPages",
    f"{SLIPS}:FreesRemovedPagesTwice",
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.rsplit(":", 1)[-1])
def test_dpor_proves_every_kind_bounded_dfs_finds(variant: str) -> None:
    kw = dict(cpus=2, rounds=1, jobs=1, minimize=False, seed=1, budget=300.0)
    brute = api.explore(variant, strategy="dfs", preemptions=3, **kw)  # type: ignore[arg-type]
    proof = api.explore(variant, strategy="dpor", **kw)  # type: ignore[arg-type]
    assert brute.raw.explore is not None and brute.raw.explore.claim == "bounded"
    assert proof.raw.explore is not None and proof.raw.explore.claim == "verified"
    # Invariant: a sound reduction loses no kind any interleaving shows.
    assert set(brute.found) <= set(proof.found), (brute.raw.coverage, proof.raw.coverage)
    assert not brute.incidents and not proof.incidents


def test_the_pool_slips_are_caught() -> None:
    """The probes are not vacuous: each one's slip is seen, as the kind only it causes."""
    for name in ("FreesAddedPages", "FreesRemovedPagesTwice"):
        r = api.explore(f"{SLIPS}:{name}", strategy="dpor", cpus=2, rounds=1, jobs=1, seed=1)
        assert "pamt_pages_lost" in r.found, (name, r.found)


#: 2 ranges, workload seed 8: CPU 0 maps pages of range 0, CPU 1 of range 1, so the
#: ranges meet only in the module, through the PAMT pairs (pool pages in both ranges)
TWO_RANGES = ["v6", "locked", f"{HERE / 'range_lock_variants.py'}:RangeSerialised"]


@pytest.mark.parametrize("variant", TWO_RANGES, ids=lambda v: v.rsplit(":", 1)[-1])
def test_dpor_proves_every_kind_bounded_dfs_finds_across_two_ranges(variant: str) -> None:
    kw = dict(cpus=2, rounds=1, ranges=2, jobs=1, minimize=False, seed=8, budget=300.0)
    brute = api.explore(variant, strategy="dfs", preemptions=3, **kw)  # type: ignore[arg-type]
    proof = api.explore(variant, strategy="dpor", **kw)  # type: ignore[arg-type]
    assert brute.raw.explore is not None and brute.raw.explore.claim == "bounded"
    assert proof.raw.explore is not None and proof.raw.explore.claim == "verified"
    # Invariant: a sound reduction loses no kind any interleaving shows.
    assert set(brute.found) <= set(proof.found), (brute.raw.coverage, proof.raw.coverage)
    assert not brute.incidents and not proof.incidents


def test_a_per_range_serialisation_fails_through_the_other_ranges_pair() -> None:
    """One CPU per range and no pamt_lock: the refcount protocol alone is sound there,
    and with no fault injected the only way a REMOVE can fail is another CPU's ADD
    holding this range's entry for the pair page it walks (tests/range_lock_variants.py)."""
    r = api.explore(
        f"{HERE / 'range_lock_variants.py'}:RangeSerialised",
        strategy="dpor", cpus=2, rounds=1, ranges=2, jobs=1, seed=8,
    )  # fmt: skip
    assert "put_failed" in r.found, r.found
    assert r.raw.explore is not None and r.raw.explore.claim == "verified"
