"""The controller's footprints of parked steps, checked against the real atomics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpamt.explorer.board import OPS
from shmpamt.explorer.footprint import CONDITIONAL, Footprints
from shmpamt.machine.atomic import INT_MAX, INT_MIN, RefcountArray
from shmpamt.schedulers.base import Access

CONDITIONAL_OPS = sorted(OPS[i] for i in CONDITIONAL)
EDGES = st.sampled_from([0, 1, -1, 2, -2, INT_MAX, INT_MIN]) | st.integers(INT_MIN, INT_MAX)


@pytest.fixture(scope="module")
def slot() -> Iterator[RefcountArray]:
    a = RefcountArray.create(1)
    yield a
    a.close()


@settings(max_examples=500, deadline=None)
@given(op=st.sampled_from(CONDITIONAL_OPS), v=EDGES, a=EDGES, b=EDGES)
def test_a_parked_conditional_atomic_reads_only_when_it_would_change_nothing(
    slot: RefcountArray, op: str, v: int, a: int, b: int
) -> None:
    """The prediction made before the step, against what the step then does to ``v``."""
    fp = Footprints(2)
    slot.set(0, v)
    operands = (a, b) if op in ("atomic_add_unless", "atomic_cmpxchg") else ()
    getattr(slot, op.removeprefix("atomic_"))(0, *operands)
    changed = slot.read(0) != v
    predicted = fp.pending(OPS.index(op), 0, 1, [v], a, b)
    # Invariant: a step that changes its slot keeps its write; one that does not only reads.
    assert bool(predicted.writes) == changed
    assert predicted == (
        fp.of(OPS.index(op), 0, 1) if changed else fp.effect(OPS.index(op), 0, 1, v, v)
    )


def test_only_conditional_atomics_are_judged_in_their_state() -> None:
    fp = Footprints(2)
    inc = OPS.index("atomic_inc")
    assert inc not in CONDITIONAL
    assert set(CONDITIONAL_OPS) == {
        "atomic_inc_not_zero", "atomic_add_unless", "atomic_inc_unless_negative",
        "atomic_dec_unless_positive", "atomic_dec_if_positive", "atomic_cmpxchg",
    }  # fmt: skip
    assert fp.pending(inc, 0, 0, [], 0, 0) == fp.of(inc, 0, 0)  # never reads a slot


def test_two_step_seamcalls_depend_where_their_pamt_entry_locks_meet() -> None:
    """Begin and end of ADD/REMOVE take and drop the 2 MiB entry exclusive, AUG/RECLAIM
    shared: only pairs with an exclusive side are ordered (a try-lock's answer depends
    on who holds the entry)."""
    from shmpamt.schedulers.base import dependent

    fp = Footprints(2, two_phase=True)

    def at(op: str, cpu: int, r: int = 0) -> Access:
        return fp.of(OPS.index(op), r, cpu)

    add, remove = "TDH.PHYMEM.PAMT.ADD", "TDH.PHYMEM.PAMT.REMOVE"
    aug, reclaim = "TDH.MEM.PAGE.AUG", "TDH.PHYMEM.PAGE.RECLAIM"
    assert dependent(at(add, 0), at(add, 1))
    assert dependent(at(add, 0), at(aug, 1))
    assert dependent(at(add + ".end", 0), at(aug, 1))
    assert dependent(at(aug + ".end", 0), at(remove, 1))
    assert not dependent(at(aug, 0), at(reclaim, 1))
    assert not dependent(at(aug + ".end", 0), at(aug, 1))
    assert not dependent(at(add, 0, 0), at(add, 1, 1))  # other ranges' entries
    # one-step calls keep their footprints: ADD writes the PAMT, AUG reads it
    one = Footprints(2, two_phase=False)
    assert one.of(OPS.index(add), 0, 0) != fp.of(OPS.index(add), 0, 0)


def test_an_add_meets_the_other_ranges_through_its_pair() -> None:
    """Pool pages live in the guest ranges: ADD of range 0 walks a pair page of range 1
    shared, so its begin and end are ordered against range 1's ADD/REMOVE and against
    range 1's AUG/RECLAIM begin (whose walk promotes when range 1 has no PAMT); with
    one range nothing changes, and AUG/RECLAIM of two ranges still commute."""
    from shmpamt.schedulers.base import dependent

    add, remove = "TDH.PHYMEM.PAMT.ADD", "TDH.PHYMEM.PAMT.REMOVE"
    aug, reclaim = "TDH.MEM.PAGE.AUG", "TDH.PHYMEM.PAGE.RECLAIM"
    two = Footprints(2, two_phase=True, ranges=2)
    one = Footprints(2, two_phase=True, ranges=1)

    def at(fp: Footprints, op: str, cpu: int, r: int) -> Access:
        return fp.of(OPS.index(op), r, cpu)

    for step in (add, add + ".end"):
        for other in (add, add + ".end", remove, remove + ".end", aug, reclaim):
            assert dependent(at(two, step, 0, 0), at(two, other, 1, 1)), (step, other)
        assert not dependent(at(one, step, 0, 0), at(one, aug, 1, 1))
    assert not dependent(at(two, aug, 0, 0), at(two, reclaim, 1, 1))
    assert not dependent(at(two, remove, 0, 0), at(two, aug + ".end", 1, 1))
    # one-step calls hold nothing between steps: the pair's walk meets no one
    flat = Footprints(2, two_phase=False, ranges=2)
    assert not dependent(at(flat, add, 0, 0), at(flat, aug, 1, 1))
