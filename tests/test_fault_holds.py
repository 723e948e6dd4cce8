"""Issue 17, item 2: a page whose RECLAIM injection never lets through is the fault's, not the
variant's. The module marks its range fault-held so quiescence can skip it."""

from __future__ import annotations

from shmpamt import tdx
from shmpamt.machine.ipc import new_token
from shmpamt.machine.kernel import page_hpa
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import TdxModule
from shmpamt.module.faults import FaultPlan, page_kept_by_injection

ADD, AUG, RECLAIM = tdx.TDH_PHYMEM_PAMT_ADD, tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM


def _run(spec: str) -> tuple[list[int], int, list[int]]:
    """ADD ranges 0 and 1, AUG a page in each, RECLAIM both 1000 times at most (as the worker
    retries); returns (fault-held ranges, violations logged, last RECLAIM statuses)."""
    token = new_token()
    log = ViolationLog.create(capacity=16, token=token)
    pool = PamtPagePool.create(8, log, token)
    try:
        with (
            TdxModule.start(1, 2, 2, pool, log, FaultPlan.parse(spec, 1), token) as m,
            SeamcallPort.attach(m.names, 0) as port,
        ):
            last = []
            for r in (0, 1):
                a, b = pool.alloc(0), pool.alloc(0)
                assert a is not None and b is not None
                assert port.call(ADD, r * tdx.SZ_2M | tdx.TDX_PS_2M, a, b)[0] == 0
                page = page_hpa(r, 1) | tdx.TDX_PS_4K
                assert port.call(AUG, page)[0] == 0
                for _ in range(1000):
                    st = port.call(RECLAIM, page)[0]
                    if not page_kept_by_injection(st):
                        break
                last.append(st)
            return m.state.fault_held_ranges(), log.total(), last
    finally:
        pool.close()
        log.close()


def test_a_reclaim_refused_every_time_marks_its_range_fault_held() -> None:
    held, logged, last = _run("reclaim.busy=1")
    assert [page_kept_by_injection(s) for s in last] == [True, True]
    assert held == [0, 1] and logged == 0


def test_a_reclaim_that_gets_through_leaves_no_mark() -> None:
    held, logged, last = _run("reclaim.busy=0.5")
    assert last == [tdx.TDX_SUCCESS, tdx.TDX_SUCCESS]
    # Invariant: a range is fault-held only while a refused page is still assigned.
    assert held == [] and logged == 0


def test_without_faults_nothing_is_fault_held() -> None:
    held, _, last = _run("")
    assert held == [] and last == [0, 0]


def test_a_correct_variant_stays_clean_when_remove_is_refused() -> None:
    """v6 republishes refcount 1 when PAMT.REMOVE fails: with the failure injected, the
    PAMT left behind is the fault's doing, so quiescence does not judge that range."""
    import shmpamt

    # one CPU: every put takes refcount 1->0 and REMOVEs until injection refuses one
    r = shmpamt.stress("v6", cpus=1, ranges=1, iterations=300, seed=1, faults="remove.busy=0.3")
    assert r.raw.faults_injected > 0
    assert r.clean, r.to_dict()
