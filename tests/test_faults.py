"""Fault plans: the spec language, its error messages, and seeded determinism."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpamt import tdx
from shmpamt.module.faults import (
    INJECTED_BUSY,
    INJECTED_DELAY_AFTER,
    INJECTED_DELAY_BEFORE,
    MAX_DELAY,
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


@pytest.mark.parametrize(
    "spec",
    [
        "*.delay_after=1:1e300",
        "add.delay=0.5:1e10",
        "add.delay=0.5:1.0001",
        "add.delay=1e300:1",
        "add.busy=inf",
        "aug.delay=0.5:inf",
        "aug.delay=0.5:nan",
        "reclaim.delay_after=nan:1",
    ],
)
def test_absurd_parameters_are_refused_with_one_line(spec: str) -> None:
    with pytest.raises(ValueError) as e:
        FaultPlan.parse(spec, seed=0)
    msg = str(e.value)
    assert repr(spec) in msg and "\n" not in msg


def test_the_delay_bound_is_explained() -> None:
    with pytest.raises(ValueError, match="10 s SEAMCALL timeout"):
        FaultPlan.parse("add.delay=0.5:1e10", seed=0)
    plan = FaultPlan.parse(f"*.delay=1:{MAX_DELAY},*.delay_after=1:{MAX_DELAY}", seed=0)
    assert plan.for_leaf(tdx.TDH_MEM_PAGE_AUG) == LeafFaults(
        delay_p=1.0, delay_max=MAX_DELAY, delay_after_p=1.0, delay_after_max=MAX_DELAY
    )


_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e300", "-0", "1e-400", "1", "1.0000001", "0x10", "1_0", "", " 1 "]),
).map(str)
_token = st.builds(
    lambda leaf, kind, a, b, colon: f"{leaf}.{kind}={a}{':' + b if colon else ''}",
    st.sampled_from(["add", "remove", "aug", "reclaim", "*", "alloc"]),
    st.sampled_from(["busy", "delay", "delay_after", "fail"]),
    _numbers,
    _numbers,
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_token, max_size=5))
def test_any_accepted_spec_cannot_fail_in_the_daemon(tokens: list[str]) -> None:
    spec = ",".join(tokens)
    try:
        plan = FaultPlan.parse(spec, seed=1)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    # Invariant: an accepted plan only ever asks the daemon for sleeps time.sleep
    # takes (finite, 0..MAX_DELAY) and probabilities that mean something.
    assert 0.0 <= plan.alloc_fail <= 1.0
    for leaf, f in plan.leaves:
        for p in (f.busy, f.delay_p, f.delay_after_p):
            assert math.isfinite(p) and 0.0 <= p <= 1.0
        rng = plan.module_rng(0)
        for _ in range(50):
            d = plan.decide(rng, leaf)
            for s in (d.delay_before, d.delay_after):
                assert math.isfinite(s) and 0.0 <= s <= MAX_DELAY
    assert FaultPlan.parse(plan.describe(), seed=1) == plan


def test_edge_of_every_bound_runs_in_a_real_daemon() -> None:
    """The extremes the parser accepts, through the daemon: answered, no internal error."""
    from shmpamt.machine.ipc import new_token
    from shmpamt.machine.pages import PamtPagePool
    from shmpamt.machine.seamcall import SeamcallPort
    from shmpamt.machine.violation_log import ViolationLog
    from shmpamt.module.daemon import TdxModule

    spec = "*.busy=1e-300,*.delay=1:5e-324,*.delay_after=1:0.0001,add.busy=0"
    token = new_token()
    log = ViolationLog.create(capacity=16, token=token)
    pool = PamtPagePool.create(8, log, token)
    try:
        with (
            TdxModule.start(1, 1, 2, pool, log, FaultPlan.parse(spec, 3), token) as m,
            SeamcallPort.attach(m.names, 0, timeout=5.0) as port,
        ):
            a, b = pool.alloc(0), pool.alloc(0)
            assert a is not None and b is not None
            assert port.call(tdx.TDH_PHYMEM_PAMT_ADD, tdx.TDX_PS_2M, a, b)[0] == 0
            for _ in range(20):
                assert port.call(tdx.TDH_MEM_PAGE_AUG, tdx.TDX_PS_4K)[0] == 0
                assert port.call(tdx.TDH_PHYMEM_PAGE_RECLAIM, tdx.TDX_PS_4K)[0] == 0
            assert port.call(tdx.TDH_PHYMEM_PAMT_REMOVE, tdx.TDX_PS_2M)[0] == 0
            assert m.message == "" and log.total() == 0
    finally:
        pool.close()
        log.close()
