"""Fault plans: the spec language, its error messages, and seeded determinism."""

from __future__ import annotations

import random

import pytest

from shmpamt import tdx
from shmpamt.module.faults import (
    INJECTED_BUSY,
    INJECTED_DELAY_AFTER,
    INJECTED_DELAY_BEFORE,
    FaultPlan,
    LeafFaults,
)

EXAMPLE = (
    "add.busy=0.1,remove.busy=0.05,aug.delay=0.3:0.002,*.delay_after=0.1:0.001,alloc.fail=0.01"
)


def test_parse_the_documented_example() -> None:
    plan = FaultPlan.parse(EXAMPLE, seed=7)
    assert plan.seed == 7 and plan.alloc_fail == 0.01
    add = plan.for_leaf(tdx.TDH_PHYMEM_PAMT_ADD)
    aug = plan.for_leaf(tdx.TDH_MEM_PAGE_AUG)
    rec = plan.for_leaf(tdx.TDH_PHYMEM_PAGE_RECLAIM)
    assert add == LeafFaults(busy=0.1, delay_after_p=0.1, delay_after_max=0.001)
    assert aug == LeafFaults(delay_p=0.3, delay_max=0.002, delay_after_p=0.1, delay_after_max=0.001)
    assert rec == LeafFaults(delay_after_p=0.1, delay_after_max=0.001)
    assert plan.for_leaf(tdx.SHMPAMT_NOP) is None


def test_tokens_apply_in_order() -> None:
    plan = FaultPlan.parse("*.busy=0.5,add.busy=0", seed=0)
    assert plan.for_leaf(tdx.TDH_PHYMEM_PAMT_ADD) is None  # exempted: nothing left to inject
    assert plan.for_leaf(tdx.TDH_PHYMEM_PAMT_REMOVE) == LeafFaults(busy=0.5)


def test_describe_round_trips() -> None:
    plan = FaultPlan.parse(EXAMPLE, seed=3)
    assert FaultPlan.parse(plan.describe(), seed=3) == plan
    assert FaultPlan.none().describe() == "none"


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("add.busy=0.1,frob.busy=0.1", "frob.busy=0.1"),
        ("add.stall=0.1", "add.stall=0.1"),
        ("add.busy=1.5", "add.busy=1.5"),
        ("add.busy=-0.1", "add.busy=-0.1"),
        ("aug.delay=0.5:-1", "aug.delay=0.5:-1"),
        ("aug.delay=0.5", "aug.delay=0.5"),
        ("aug.delay=x:1", "aug.delay=x:1"),
        ("add.busy", "add.busy"),
        ("busy=0.1", "busy=0.1"),
        ("alloc.busy=0.1", "alloc.busy=0.1"),
        ("alloc.fail=nan", "alloc.fail=nan"),
    ],
)
def test_malformed_specs_name_the_bad_token(spec: str, bad: str) -> None:
    with pytest.raises(ValueError) as e:
        FaultPlan.parse(spec, seed=0)
    msg = str(e.value)
    assert repr(bad) in msg and "\n" not in msg


def test_none_injects_nothing() -> None:
    for plan in (FaultPlan.none(), FaultPlan.parse("", 1), FaultPlan.parse("none", 1)):
        assert not plan.active
        fails = plan.alloc_failer(0)
        assert not any(fails() for _ in range(1000))


def _draws(plan: FaultPlan, cpu: int, n: int = 200) -> list[bool]:
    fails = plan.alloc_failer(cpu)
    return [fails() for _ in range(n)]


def test_alloc_failures_are_seeded_per_cpu() -> None:
    plan = FaultPlan.parse("alloc.fail=0.5", seed=11)
    a = _draws(plan, 0)
    assert a == _draws(FaultPlan.parse("alloc.fail=0.5", seed=11), 0)
    assert a != _draws(plan, 1)
    assert a != _draws(FaultPlan.parse("alloc.fail=0.5", seed=12), 0)
    assert 50 < sum(a) < 150


def test_decide_is_deterministic_and_draws_a_fixed_amount() -> None:
    plan = FaultPlan.parse("add.busy=0.5,add.delay=0.5:0.01,add.delay_after=0.5:0.01", seed=5)
    r1, r2 = plan.module_rng(0), plan.module_rng(0)
    d1 = [plan.decide(r1, tdx.TDH_PHYMEM_PAMT_ADD) for _ in range(300)]
    d2 = [plan.decide(r2, tdx.TDH_PHYMEM_PAMT_ADD) for _ in range(300)]
    assert d1 == d2
    seen = 0
    for d in d1:
        seen |= d.flags
    assert seen == INJECTED_BUSY | INJECTED_DELAY_BEFORE | INJECTED_DELAY_AFTER
    # Invariant: a decision consumes the same draws whatever it decided, so one
    # fault never shifts the ones that follow.
    r3 = plan.module_rng(0)
    for _ in range(300):
        plan.decide(r3, tdx.TDH_PHYMEM_PAMT_ADD)
    ref = random.Random(f"shmpamt:{5}:module:{0}")
    for _ in range(300 * 5):
        ref.random()
    assert r3.random() == ref.random()
    # Leaves without faults draw nothing.
    r4, r5 = plan.module_rng(0), plan.module_rng(0)
    plan.decide(r4, tdx.TDH_MEM_PAGE_AUG)
    assert r4.random() == r5.random()


def test_busy_decisions_carry_no_delay() -> None:
    plan = FaultPlan.parse("remove.busy=1,remove.delay=1:0.5", seed=0)
    d = plan.decide(plan.module_rng(2), tdx.TDH_PHYMEM_PAMT_REMOVE)
    assert d.busy and d.delay_before == 0 and d.flags == INJECTED_BUSY
