"""The TDX module daemon, driven by scripted SEAMCALLs: every status code and every record."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from shmpamt import tdx
from shmpamt.machine.ipc import new_token
from shmpamt.machine.kernel import POOL_BASE, page_hpa
from shmpamt.machine.pages import MODULE, PamtPagePool
from shmpamt.machine.seamcall import ModuleDied, SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import ModuleNames, ModuleStartError, TdxModule
from shmpamt.module.faults import INJECTED_BUSY, INJECTED_DELAY_AFTER, FaultPlan
from shmpamt.module.state import ModuleState, apply_seamcall
from shmpamt.records.violations import (
    ADD_PRESENT,
    LOST_NOT_OWNED,
    PAMT_PAGES_LOST,
    REMOVE_ABSENT,
    REMOVE_WHILE_IN_USE,
    USE_WITHOUT_PAMT,
    Violation,
)

NCPUS, NRANGES, PPR = 2, 3, 4
PS2M = tdx.TDX_PS_2M


def r2m(r: int) -> int:
    """PAMT.ADD/REMOVE operand of range r."""
    return r * tdx.SZ_2M | PS2M


@dataclass
class Rig:
    log: ViolationLog
    pool: PamtPagePool
    module: TdxModule
    ports: list[SeamcallPort]

    def call(self, cpu: int, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0) -> int:
        return self.ports[cpu].call(leaf, rcx, rdx, r8)[0]

    def pair(self, cpu: int) -> tuple[int, int]:
        a, b = self.pool.alloc(cpu), self.pool.alloc(cpu)
        assert a is not None and b is not None
        return a, b

    def add(self, cpu: int, r: int) -> tuple[int, int]:
        a, b = self.pair(cpu)
        assert self.call(cpu, tdx.TDH_PHYMEM_PAMT_ADD, r2m(r), a, b) == tdx.TDX_SUCCESS
        return a, b

    def only_record(self) -> Violation:
        recs = self.log.records()
        assert len(recs) == 1, recs
        return recs[0]


def _rig(faults: FaultPlan) -> Iterator[Rig]:
    token = new_token()
    log = ViolationLog.create(capacity=256, token=token)
    pool = PamtPagePool.create(32, log, token)
    ports: list[SeamcallPort] = []
    try:
        with TdxModule.start(NCPUS, NRANGES, PPR, pool, log, faults, token) as module:
            ports = [SeamcallPort.attach(module.names, c, timeout=10.0) for c in range(NCPUS)]
            yield Rig(log, pool, module, ports)
            for p in ports:
                p.close()
            ports = []
    finally:
        for p in ports:
            p.close()
        pool.close()
        log.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield from _rig(FaultPlan.none())


# --- PAMT.ADD --------------------------------------------------------------------------------


def test_add_of_an_absent_range_takes_the_pages(rig: Rig) -> None:
    a, b = rig.add(0, 1)
    st = rig.module.state
    assert st.pamt_present(1) and st.pamt_pages(1) == (a, b)
    assert not st.pamt_present(0) and not st.pamt_present(2)
    assert rig.pool.owner(a) == rig.pool.owner(b) == MODULE
    assert rig.log.total() == 0


def test_add_of_a_present_range_is_refused_and_recorded(rig: Rig) -> None:
    rig.add(0, 2)
    c, d = rig.pair(1)
    assert rig.call(1, tdx.TDH_PHYMEM_PAMT_ADD, r2m(2), c, d) == tdx.TDX_HPA_RANGE_NOT_FREE
    v = rig.only_record()
    assert (v.name, v.cpu, v.range, v.leaf) == (ADD_PRESENT, 1, 2, tdx.TDH_PHYMEM_PAMT_ADD)
    assert rig.pool.owner(c) == rig.pool.owner(d) == 2  # the loser keeps its pages


def test_add_of_pages_the_caller_does_not_own_is_refused_and_undone(rig: Rig) -> None:
    a = rig.pool.alloc(1)
    b = rig.pool.alloc(0)
    assert a is not None and b is not None
    status = rig.call(1, tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), a, b)
    assert status == tdx.TDX_PAGE_NOT_FREE
    v = rig.only_record()
    assert (v.name, v.cpu, v.range, v.a, v.b) == (PAMT_PAGES_LOST, 1, 0, b, LOST_NOT_OWNED)
    assert rig.pool.owner(a) == 2 and rig.pool.owner(b) == 1  # first take rolled back
    assert not rig.module.state.pamt_present(0)


# --- PAMT.REMOVE ----------------------------------------------------------------------------


def test_remove_returns_the_pages_to_the_caller(rig: Rig) -> None:
    a, b = rig.add(0, 0)
    status, _, rdx, r8 = rig.ports[1].call(tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(0))
    assert (status, rdx, r8) == (tdx.TDX_SUCCESS, a, b)
    assert rig.pool.owner(a) == rig.pool.owner(b) == 2  # cpu 1 called REMOVE
    assert not rig.module.state.pamt_present(0)
    assert rig.log.total() == 0


def test_remove_of_an_absent_range_is_refused_and_recorded(rig: Rig) -> None:
    status, _, rdx, r8 = rig.ports[0].call(tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(1))
    assert (status, rdx, r8) == (tdx.TDX_NO_PAMT_PAGE_PAIR, 0, 0)
    v = rig.only_record()
    assert (v.name, v.cpu, v.range, v.leaf) == (REMOVE_ABSENT, 0, 1, tdx.TDH_PHYMEM_PAMT_REMOVE)


def test_remove_while_pages_are_assigned_is_refused_and_recorded(rig: Rig) -> None:
    rig.add(0, 1)
    for j in (0, 3):
        assert rig.call(0, tdx.TDH_MEM_PAGE_AUG, page_hpa(1, j)) == tdx.TDX_SUCCESS
    assert rig.call(1, tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(1)) == tdx.TDX_PAMT_PAGE_NOT_EMPTY
    v = rig.only_record()
    assert (v.name, v.cpu, v.range, v.leaf, v.a) == (
        REMOVE_WHILE_IN_USE,
        1,
        1,
        tdx.TDH_PHYMEM_PAMT_REMOVE,
        2,
    )
    assert rig.module.state.pamt_present(1) and rig.module.state.assigned_count(1) == 2


# --- PAGE.AUG / PAGE.RECLAIM ------------------------------------------------------------------


def test_aug_and_reclaim_track_assignment(rig: Rig) -> None:
    rig.add(0, 2)
    st = rig.module.state
    assert rig.call(1, tdx.TDH_MEM_PAGE_AUG, page_hpa(2, 1)) == tdx.TDX_SUCCESS
    assert st.page_assigned(2, 1) and st.assigned_count(2) == 1
    assert rig.call(1, tdx.TDH_PHYMEM_PAGE_RECLAIM, page_hpa(2, 1)) == tdx.TDX_SUCCESS
    assert not st.page_assigned(2, 1) and st.assigned_count(2) == 0
    assert rig.log.total() == 0


def test_aug_without_pamt_is_refused_and_recorded(rig: Rig) -> None:
    hpa = page_hpa(2, 3)
    assert rig.call(1, tdx.TDH_MEM_PAGE_AUG, hpa) == tdx.TDX_MISSING_PAMT_PAGE_PAIR
    v = rig.only_record()
    assert (v.name, v.cpu, v.range, v.leaf, v.a) == (
        USE_WITHOUT_PAMT,
        1,
        2,
        tdx.TDH_MEM_PAGE_AUG,
        hpa,
    )
    assert not rig.module.state.page_assigned(2, 3)


def test_reclaim_without_pamt_is_refused_and_recorded(rig: Rig) -> None:
    hpa = page_hpa(0, 2)
    assert rig.call(0, tdx.TDH_PHYMEM_PAGE_RECLAIM, hpa) == tdx.TDX_PAGE_METADATA_INCORRECT
    v = rig.only_record()
    assert (v.name, v.cpu, v.range, v.leaf, v.a) == (
        USE_WITHOUT_PAMT,
        0,
        0,
        tdx.TDH_PHYMEM_PAGE_RECLAIM,
        hpa,
    )


def test_double_aug_is_refused_without_a_violation(rig: Rig) -> None:
    rig.add(0, 0)
    assert rig.call(0, tdx.TDH_MEM_PAGE_AUG, page_hpa(0, 0)) == tdx.TDX_SUCCESS
    assert rig.call(1, tdx.TDH_MEM_PAGE_AUG, page_hpa(0, 0)) == tdx.TDX_PAGE_METADATA_INCORRECT
    assert rig.module.state.assigned_count(0) == 1
    assert rig.log.total() == 0  # a worker bug, not a protocol bug


def test_reclaim_of_an_unassigned_page_is_refused_without_a_violation(rig: Rig) -> None:
    rig.add(0, 0)
    assert (
        rig.call(0, tdx.TDH_PHYMEM_PAGE_RECLAIM, page_hpa(0, 1)) == tdx.TDX_PAGE_METADATA_INCORRECT
    )
    assert rig.module.state.assigned_count(0) == 0
    assert rig.log.total() == 0


# --- malformed operands ---------------------------------------------------------------------

POOL0 = POOL_BASE
POOL1 = POOL_BASE + 4096

MALFORMED = [
    ("add misaligned", tdx.TDH_PHYMEM_PAMT_ADD, tdx.SZ_2M + 4096 | PS2M, POOL0, POOL1),
    ("add 4K size", tdx.TDH_PHYMEM_PAMT_ADD, tdx.SZ_2M | tdx.TDX_PS_4K, POOL0, POOL1),
    ("add 1G size", tdx.TDH_PHYMEM_PAMT_ADD, tdx.TDX_PS_1G, POOL0, POOL1),
    ("add out of range", tdx.TDH_PHYMEM_PAMT_ADD, r2m(NRANGES), POOL0, POOL1),
    ("add same page twice", tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), POOL0, POOL0),
    ("add non-pool page", tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), POOL0, 4096),
    ("add no pages", tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), 0, 0),
    ("remove misaligned", tdx.TDH_PHYMEM_PAMT_REMOVE, 4096 | PS2M, 0, 0),
    ("remove out of range", tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(NRANGES), 0, 0),
    ("aug 2M size", tdx.TDH_MEM_PAGE_AUG, page_hpa(0, 1) | PS2M, 0, 0),
    ("aug unaligned", tdx.TDH_MEM_PAGE_AUG, page_hpa(0, 1) + 8, 0, 0),
    ("aug beyond pages_per_range", tdx.TDH_MEM_PAGE_AUG, page_hpa(0, PPR), 0, 0),
    ("aug out of range", tdx.TDH_MEM_PAGE_AUG, page_hpa(NRANGES, 0), 0, 0),
    ("reclaim out of range", tdx.TDH_PHYMEM_PAGE_RECLAIM, page_hpa(NRANGES, 0), 0, 0),
    ("status out of range", tdx.SHMPAMT_STATUS, NRANGES, 0, 0),
    ("unknown leaf", 1234, 0, 0, 0),
]


@pytest.mark.parametrize(
    ("leaf", "rcx", "rdx", "r8"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_operands_are_refused_and_change_nothing(
    rig: Rig, leaf: int, rcx: int, rdx: int, r8: int
) -> None:
    a, b = rig.pair(0)
    assert {a, b} == {POOL0, POOL1}
    # the module's order: operands first, then the pair's bitmap test-and-set, which a
    # page given twice or a page that is not a free page fails (PAGE_NOT_FREE, rolled back)
    bitmap = leaf == tdx.TDH_PHYMEM_PAMT_ADD and (rdx == r8 or not rig.pool.contains(r8))
    want = tdx.TDX_PAGE_NOT_FREE if bitmap and rcx == r2m(0) else tdx.TDX_OPERAND_INVALID
    assert rig.call(0, leaf, rcx, rdx, r8) == want
    st = rig.module.state
    assert st.present_ranges() == [] and all(st.assigned_count(r) == 0 for r in range(NRANGES))
    assert rig.pool.owner(a) == rig.pool.owner(b) == 1
    assert rig.log.total() == 0


def test_negative_registers_wrap_to_64_bits(rig: Rig) -> None:
    assert rig.call(0, tdx.TDH_PHYMEM_PAMT_REMOVE, -1) == tdx.TDX_OPERAND_INVALID


# --- private leaves, statistics, reset --------------------------------------------------------


def test_status_leaf_reports_presence_and_assigned_count(rig: Rig) -> None:
    rig.add(1, 2)
    rig.call(1, tdx.TDH_MEM_PAGE_AUG, page_hpa(2, 2))
    assert rig.ports[0].call(tdx.SHMPAMT_STATUS, 2) == (tdx.TDX_SUCCESS, 0, 1, 1)
    assert rig.ports[0].call(tdx.SHMPAMT_STATUS, 0) == (tdx.TDX_SUCCESS, 0, 0, 0)
    assert rig.ports[0].call(tdx.SHMPAMT_NOP, 5, 6, 7) == (tdx.TDX_SUCCESS, 0, 0, 0)


def test_statistics_count_calls_per_leaf(rig: Rig) -> None:
    rig.add(0, 0)
    for _ in range(3):
        rig.call(1, tdx.SHMPAMT_NOP)
    rig.call(0, tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(0))
    rig.call(0, tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(0))
    rig.call(0, 999)
    s = rig.module.statistics()
    assert s.calls_of(tdx.TDH_PHYMEM_PAMT_ADD) == 1
    assert s.calls_of(tdx.TDH_PHYMEM_PAMT_REMOVE) == 2
    assert s.calls_of(tdx.SHMPAMT_NOP) == 3
    assert dict(s.calls)["other"] == 1
    assert s.injected_total == 0


def test_reset_leaf_forgets_every_pamt_and_assignment(rig: Rig) -> None:
    rig.add(0, 0)
    rig.add(1, 1)
    rig.call(0, tdx.TDH_MEM_PAGE_AUG, page_hpa(0, 0))
    rig.module.reset()  # through the control port
    st = rig.module.state
    assert st.present_ranges() == [] and st.assigned_count(0) == 0
    assert not st.page_assigned(0, 0) and st.pamt_pages(1) == (0, 0)
    assert rig.module.statistics().calls_of(tdx.SHMPAMT_RESET) == 1


def test_violation_timestamps_are_monotonic(rig: Rig) -> None:
    for r in range(NRANGES):
        rig.call(r % NCPUS, tdx.TDH_PHYMEM_PAMT_REMOVE, r2m(r))
    recs = rig.log.records()
    assert [v.range for v in recs] == list(range(NRANGES))
    assert all(x.ts_ns < y.ts_ns for x, y in itertools.pairwise(recs))


# --- fault injection --------------------------------------------------------------------------


def test_injected_busy_is_flagged_counted_and_not_a_violation() -> None:
    for rig in _rig(FaultPlan.parse("add.busy=1", seed=1)):
        a, b = rig.pair(0)
        assert rig.call(0, tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), a, b) == tdx.TDX_OPERAND_BUSY
        assert rig.ports[0].injected == 1 and rig.ports[0].injected_busy == 1
        assert rig.ports[0].last_injected == INJECTED_BUSY
        assert rig.module.statistics().injected_of("busy") == 1
        # A busy call changes nothing: no PAMT, the pages stay with the caller, no record.
        assert not rig.module.state.pamt_present(0)
        assert rig.pool.owner(a) == rig.pool.owner(b) == 1
        assert rig.log.total() == 0
        # Leaves without faults are never flagged.
        assert (
            rig.call(0, tdx.TDH_PHYMEM_PAGE_RECLAIM, page_hpa(0, 0))
            == tdx.TDX_PAGE_METADATA_INCORRECT
        )
        assert rig.ports[0].last_injected == 0 and rig.ports[0].injected == 1


def test_injected_delay_is_flagged_and_the_call_still_happens() -> None:
    for rig in _rig(FaultPlan.parse("add.delay_after=1:0.001", seed=1)):
        rig.add(0, 0)
        assert rig.ports[0].last_injected == INJECTED_DELAY_AFTER
        assert rig.module.state.pamt_present(0)
        s = rig.module.statistics()
        assert s.injected_of("delay_after") == 1 and s.injected_total == 1


def _busy_trace(seed: int) -> list[int]:
    """Injected flags seen by two CPUs running the same script against a fresh module."""
    flags = []
    for rig in _rig(FaultPlan.parse("reclaim.busy=0.5,aug.delay=0.3:0.0001", seed=seed)):
        rig.add(0, 0)
        for i in range(60):
            cpu = i % NCPUS
            port = rig.ports[cpu]
            port.call(tdx.TDH_MEM_PAGE_AUG, page_hpa(0, cpu))
            flags.append(port.last_injected)
            port.call(tdx.TDH_PHYMEM_PAGE_RECLAIM, page_hpa(0, cpu))
            flags.append(port.last_injected)
        assert rig.log.total() == 0
    return flags


def test_fault_injection_is_deterministic_per_seed() -> None:
    a = _busy_trace(42)
    assert a == _busy_trace(42)
    assert a != _busy_trace(43)
    assert INJECTED_BUSY in a


# --- lifecycle -------------------------------------------------------------------------------


def test_module_names_are_picklable_and_complete(rig: Rig) -> None:
    names = rig.module.names
    assert pickle.loads(pickle.dumps(names)) == names
    assert isinstance(names, ModuleNames)
    assert len(names.requests) == len(names.responses) == NCPUS + 1
    assert len(set(names.all_names())) == 2 + 2 * (NCPUS + 1)


def test_stop_is_clean_and_the_port_then_reports_a_dead_module() -> None:
    for rig in _rig(FaultPlan.none()):
        assert rig.module.alive()
        rig.module.stop()
        assert not rig.module.alive()
        with pytest.raises(ModuleDied):
            rig.call(0, tdx.SHMPAMT_NOP)


def test_a_daemon_that_cannot_start_gives_a_clear_error() -> None:
    token = new_token()
    log = ViolationLog.create(capacity=4, token=token)
    pool = PamtPagePool.create(2, log, token)
    pool_name = pool.name
    pool.close()  # the daemon will not find it
    try:
        gone = PamtPagePool.__new__(PamtPagePool)
        gone.name = pool_name
        with pytest.raises(ModuleStartError, match=r"failed to start.*no shared memory"):
            TdxModule.start(1, 1, 1, gone, log, FaultPlan.none(), token, ready_timeout=30)
    finally:
        log.close()


def test_transition_function_needs_no_process() -> None:
    """apply_seamcall is the module's whole behaviour; it runs in-process too."""
    log = ViolationLog.create(capacity=4)
    try:
        with PamtPagePool.create(2, log) as pool, ModuleState.create(1, 2) as st:
            a, b = pool.alloc(0), pool.alloc(0)
            assert a is not None and b is not None
            out = apply_seamcall(st, pool, 0, tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), a, b)
            assert out.registers == (tdx.TDX_SUCCESS, 0, 0, 0) and not out.findings
            out = apply_seamcall(st, pool, 0, tdx.TDH_PHYMEM_PAMT_ADD, r2m(0), a, b)
            assert out.status == tdx.TDX_HPA_RANGE_NOT_FREE
            assert [f.name for f in out.findings] == [ADD_PRESENT]
            assert log.total() == 0  # findings are returned; the daemon logs them
    finally:
        log.close()
