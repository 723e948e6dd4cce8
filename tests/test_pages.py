"""PAMT page pool: lock-free alloc, ownership transfers, and every way a page gets lost."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import pytest

from shmpamt import tdx
from shmpamt.machine.ipc import IpcError, new_token
from shmpamt.machine.kernel import POOL_BASE, page_hpa, range_of
from shmpamt.machine.pages import MODULE, PamtPagePool
from shmpamt.machine.pool_layout import PoolLayout
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.state import ModuleState
from shmpamt.records.violations import (
    LOST_DOUBLE_FREE,
    LOST_FREED_BY_MODULE_OWNER,
    LOST_LEAKED,
    LOST_NOT_OWNED,
    PAMT_PAGES_LOST,
)


@pytest.fixture
def log() -> Iterator[ViolationLog]:
    lg = ViolationLog.create(capacity=64)
    yield lg
    lg.close()


@pytest.fixture
def pool(log: ViolationLog) -> Iterator[PamtPagePool]:
    p = PamtPagePool.create(4, log)
    yield p
    p.close()


def test_alloc_hands_out_distinct_pool_addresses(pool: PamtPagePool) -> None:
    got = [pool.alloc(cpu) for cpu in (0, 1, 0, 1)]
    assert sorted(h for h in got if h is not None) == [POOL_BASE + i * 4096 for i in range(4)]
    assert sorted(pool.owners()) == [1, 1, 2, 2]
    for h, cpu in zip(got, (0, 1, 0, 1), strict=True):
        assert h is not None and pool.owner(h) == cpu + 1


def test_exhausted_pool_returns_none(pool: PamtPagePool) -> None:
    for _ in range(4):
        assert pool.alloc(0) is not None
    assert pool.alloc(1) is None
    s = pool.statistics()
    assert (s.allocs, s.exhausted, s.free, s.cpu_owned) == (4, 1, 0, 4)


def test_owner_free_returns_the_page(pool: PamtPagePool, log: ViolationLog) -> None:
    h = pool.alloc(2)
    assert h is not None
    pool.free(2, h)
    assert pool.owner(h) == 0 and pool.statistics().frees == 1
    assert log.total() == 0


def test_double_free_is_recorded(pool: PamtPagePool, log: ViolationLog) -> None:
    h = pool.alloc(1)
    assert h is not None
    pool.free(1, h)
    pool.free(1, h)
    (v,) = log.records()
    assert (v.name, v.cpu, v.a, v.b) == (PAMT_PAGES_LOST, 1, h, LOST_DOUBLE_FREE)
    assert pool.statistics().frees == 1


def test_freeing_another_cpus_page_is_recorded_and_keeps_the_owner(
    pool: PamtPagePool, log: ViolationLog
) -> None:
    h = pool.alloc(0)
    assert h is not None
    pool.free(3, h)
    (v,) = log.records()
    assert (v.name, v.cpu, v.a, v.b, v.c) == (PAMT_PAGES_LOST, 3, h, LOST_DOUBLE_FREE, 1)
    assert pool.owner(h) == 1


def test_freeing_a_module_owned_page_is_recorded(pool: PamtPagePool, log: ViolationLog) -> None:
    h = pool.alloc(0)
    assert h is not None and pool.module_take(0, h)
    pool.free(0, h)
    (v,) = log.records()
    assert (v.name, v.cpu, v.a, v.b) == (PAMT_PAGES_LOST, 0, h, LOST_FREED_BY_MODULE_OWNER)
    assert pool.owner(h) == MODULE


def test_module_take_and_give_move_ownership(pool: PamtPagePool, log: ViolationLog) -> None:
    h = pool.alloc(0)
    assert h is not None
    assert pool.module_take(0, h)
    assert pool.owner(h) == MODULE and pool.statistics().module_owned == 1
    pool.module_give(1, h)  # REMOVE hands the page to whoever called it
    assert pool.owner(h) == 2
    assert log.total() == 0
    with pytest.raises(RuntimeError):
        pool.module_give(1, h)  # the module cannot give what it does not hold


def test_module_take_of_a_page_not_owned_is_recorded(pool: PamtPagePool, log: ViolationLog) -> None:
    h = pool.alloc(0)
    assert h is not None
    assert not pool.module_take(1, h, range_=3)
    (v,) = log.records()
    assert (v.name, v.cpu, v.range, v.leaf, v.a, v.b) == (
        PAMT_PAGES_LOST,
        1,
        3,
        tdx.TDH_PHYMEM_PAMT_ADD,
        h,
        LOST_NOT_OWNED,
    )
    assert pool.owner(h) == 1


def test_check_quiescent_records_each_page_a_cpu_still_owns(
    pool: PamtPagePool, log: ViolationLog
) -> None:
    a, b, c = pool.alloc(0), pool.alloc(2), pool.alloc(2)
    assert a is not None and b is not None and c is not None
    pool.free(2, c)
    assert pool.module_take(0, a)  # the module's pages are home, not leaked
    assert pool.check_quiescent() == 1
    (v,) = log.records()
    assert (v.name, v.cpu, v.a, v.b) == (PAMT_PAGES_LOST, 2, b, LOST_LEAKED)


def test_reset_frees_everything(pool: PamtPagePool) -> None:
    h = pool.alloc(0)
    assert h is not None and pool.module_take(0, h)
    pool.alloc(1)
    pool.reset()
    s = pool.statistics()
    assert (s.free, s.allocs, s.frees, s.exhausted) == (4, 0, 0, 0)


def test_addresses_outside_the_pool_are_rejected(pool: PamtPagePool) -> None:
    for bad in (0, POOL_BASE + 4 * 4096, POOL_BASE + 1):
        assert not pool.contains(bad)
        with pytest.raises(ValueError):
            pool.free(0, bad)


def test_attach_sees_the_same_owners_and_refuses_foreign_segments(log: ViolationLog) -> None:
    with PamtPagePool.create(3, log, new_token()) as p:
        h = p.alloc(1)
        with PamtPagePool.attach(p.name, log) as q:
            assert q.npages == 3 and h is not None and q.owner(h) == 2
    with ModuleState.create(1, 1) as st, pytest.raises(IpcError):
        PamtPagePool.attach(st.name, log)
    with pytest.raises(ValueError):
        PamtPagePool.create(0, log)


def _grab_all(pool_name: str, log_name: str, cpu: int, out: mp.Queue[list[int]]) -> None:
    log = ViolationLog.attach(log_name)
    pool = PamtPagePool.attach(pool_name, log)
    got = []
    while (h := pool.alloc(cpu)) is not None:
        got.append(h)
    pool.close()
    log.close()
    out.put(got)


def test_concurrent_allocs_never_hand_out_a_page_twice(log: ViolationLog) -> None:
    ctx = mp.get_context("spawn")
    with PamtPagePool.create(2000, log) as pool:
        q: mp.Queue[list[int]] = ctx.Queue()
        procs = [ctx.Process(target=_grab_all, args=(pool.name, log.name, c, q)) for c in (0, 1)]
        for p in procs:
            p.start()
        lists = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        # Invariant: the cmpxchg claim gives every page to exactly one CPU.
        every = lists[0] + lists[1]
        assert len(every) == len(set(every)) == 2000
        assert pool.statistics().allocs == 2000


# --- pool pages inside the guest ranges (machine/pool_layout.py) ------------------------


@pytest.mark.parametrize(
    ("npages", "stride", "ranges", "ppr"),
    [(80, 2, 2, 2), (13, 3, 2, 505), (40, 2, 1, 8), (64, 4, 3, 512), (9, 1, 4, 510)],
)
def test_layout_is_a_bijection_that_avoids_every_guest_slot(
    npages: int, stride: int, ranges: int, ppr: int
) -> None:
    lay = PoolLayout.in_ranges(npages, stride, ranges, ppr)
    addrs = [lay.hpa(i) for i in range(npages)]
    assert len(set(addrs)) == npages
    for i, hpa in enumerate(addrs):
        assert lay.index(hpa) == i
        if hpa < POOL_BASE:
            r, slot = divmod(hpa // tdx.PAGE_SIZE, tdx.PAGES_PER_2M)
            # Invariant: a pool page is never a page a CPU AUGs.
            assert r < ranges and ppr <= slot < tdx.PAGES_PER_2M
    # every other page of the guest ranges and above the pool is no pool page
    owned = set(addrs)
    for r in range(ranges + 1):
        for slot in range(tdx.PAGES_PER_2M):
            hpa = page_hpa(r, slot)
            assert (lay.index(hpa) is not None) == (hpa in owned)
    assert lay.index(POOL_BASE + npages * tdx.PAGE_SIZE) is None
    assert lay.index(addrs[0] + 1) is None


def test_two_ranges_a_cpus_consecutive_pages_lie_in_both_ranges(log: ViolationLog) -> None:
    with PamtPagePool.create(80, log, new_token(), cpus=2, ranges=2, pages_per_range=2) as p:
        pair = [p.alloc(1), p.alloc(1)]
        assert [None if h is None else range_of(h) for h in pair] == [0, 1]
        assert all(h is not None and p.owner(h) == 2 and p.partition(h) == 1 for h in pair)
        # the ownership checks work on in-range pages as on the others
        assert pair[0] is not None
        p.free(1, pair[0])
        p.free(1, pair[0])
        assert [(r.name, r.b) for r in log.records()] == [(PAMT_PAGES_LOST, LOST_DOUBLE_FREE)]


def test_a_pool_too_big_for_the_spare_slots_continues_at_pool_base(log: ViolationLog) -> None:
    with PamtPagePool.create(6, log, new_token(), cpus=1, ranges=1, pages_per_range=510) as p:
        got = [p.alloc(0) for _ in range(6)]
        assert got[:2] == [page_hpa(0, 511), page_hpa(0, 510)]
        assert got[2:] == [POOL_BASE + i * tdx.PAGE_SIZE for i in range(2, 6)]
        assert p.alloc(0) is None
