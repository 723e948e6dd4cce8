"""Pool pages live in the guest ranges, so two ranges meet in the module through a pair.

The pairs here come from the allocator, not planted: with two ranges a CPU's two
consecutive pages lie one in each (machine/pool_layout.py). Each rule of the
module's pair walk (tdh_phymem_pamt_add.c: a pair page in another 2 MiB range is
walked with a shared lock) is shown through a real daemon process, with the
call's begin and end requests issued by the test so that one CPU's call can hold
its locks while the other calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from shmpamt import tdx
from shmpamt.engine.workload import put_and_judge
from shmpamt.machine.ipc import new_token
from shmpamt.machine.kernel import Kernel, page_hpa, range_of
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import REQ_BEGIN, REQ_END, SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import TdxModule
from shmpamt.module.faults import FaultPlan
from shmpamt.records.violations import PUT_FAILED

ADD, REMOVE = tdx.TDH_PHYMEM_PAMT_ADD, tdx.TDH_PHYMEM_PAMT_REMOVE
AUG = tdx.TDH_MEM_PAGE_AUG
HELD = tdx.SHMPAMT_LOCKS_HELD
PAGES = 4  # guest slots per range; the pool lives in slots 4..511
VARIANTS = Path(__file__).resolve().parent / "range_lock_variants.py"


def r2m(r: int) -> int:
    return r * tdx.SZ_2M | tdx.TDX_PS_2M


@dataclass
class Rig:
    module: TdxModule
    pool: PamtPagePool
    log: ViolationLog
    ports: list[SeamcallPort]

    def begin(self, cpu: int, leaf: int, rcx: int, rdx: int = 0, r8: int = 0) -> int:
        return self.ports[cpu].call(leaf, rcx, rdx, r8, REQ_BEGIN)[0]

    def end(self, cpu: int, leaf: int, rcx: int, rdx: int = 0, r8: int = 0) -> int:
        return self.ports[cpu].call(leaf, rcx, rdx, r8, REQ_END)[0]

    def call(self, cpu: int, leaf: int, rcx: int, rdx: int = 0, r8: int = 0) -> int:
        got = self.begin(cpu, leaf, rcx, rdx, r8)
        return got if got != HELD else self.end(cpu, leaf, rcx, rdx, r8)

    def pair(self, cpu: int) -> tuple[int, int]:
        a, b = self.pool.alloc(cpu), self.pool.alloc(cpu)
        assert a is not None and b is not None
        return a, b

    def kinds(self) -> list[str]:
        return [v.name for v in self.log.records()]


@pytest.fixture
def rig() -> Iterator[Rig]:
    token = new_token()
    log = ViolationLog.create(capacity=64, token=token)
    pool = PamtPagePool.create(32, log, token, cpus=2, ranges=2, pages_per_range=PAGES)
    try:
        with (
            TdxModule.start(2, 2, PAGES, pool, log, FaultPlan.none(), token) as m,
            contextlib.ExitStack() as stack,
        ):
            ports = [stack.enter_context(SeamcallPort.attach(m.names, c)) for c in range(2)]
            yield Rig(m, pool, log, ports)
    finally:
        pool.close()
        log.close()


def contended(status: int, operand: int) -> bool:
    return status == tdx.TDX_OPERAND_BUSY | operand and tdx.busy_cause(status) == "contention"


def test_the_allocators_pair_lies_in_both_ranges(rig: Rig) -> None:
    a, b = rig.pair(0)
    assert (range_of(a), range_of(b)) == (0, 1)
    assert rig.call(0, ADD, r2m(0), a, b) == tdx.TDX_SUCCESS
    assert rig.module.state.pamt_pages(0) == (a, b)
    # a pool page is no page a CPU may AUG: the module refuses it as an operand
    assert rig.call(1, AUG, b | tdx.TDX_PS_4K) == tdx.TDX_OPERAND_INVALID


def test_an_add_is_busy_while_the_other_range_of_its_pair_is_being_removed(rig: Rig) -> None:
    c, d = rig.pair(1)
    assert rig.call(1, ADD, r2m(1), c, d) == tdx.TDX_SUCCESS
    assert rig.begin(1, REMOVE, r2m(1)) == HELD
    a, b = rig.pair(0)  # b lies in range 1
    # Invariant: a pair page in another range is walked: that range's held entry is BUSY.
    assert contended(rig.begin(0, ADD, r2m(0), a, b), tdx.OPERAND_ID_R8)
    assert rig.end(1, REMOVE, r2m(1)) == tdx.TDX_SUCCESS
    assert rig.call(0, ADD, r2m(0), a, b) == tdx.TDX_SUCCESS  # nothing held any more
    assert rig.kinds() == []


def test_a_pair_page_in_the_target_range_is_not_walked(rig: Rig) -> None:
    c, d = rig.pair(1)
    assert rig.call(1, ADD, r2m(1), c, d) == tdx.TDX_SUCCESS
    assert rig.begin(1, REMOVE, r2m(1)) == HELD
    mine = [p for p in (*rig.pair(0), *rig.pair(0)) if range_of(p) == 0]
    assert len(mine) == 2
    assert rig.call(0, ADD, r2m(0), *mine) == tdx.TDX_SUCCESS  # range 1 is not touched
    assert rig.end(1, REMOVE, r2m(1)) == tdx.TDX_SUCCESS


def test_a_held_add_makes_the_pair_ranges_free_path_fail(rig: Rig) -> None:
    """The series' requirement, broken across ranges: CPU 0's ADD of range 0 holds
    range 1's entry shared (its pair's second page), so CPU 1's put of range 1 meets
    a REMOVE answered BUSY, from contention, with no fault injected."""
    c, d = rig.pair(1)
    assert rig.call(1, ADD, r2m(1), c, d) == tdx.TDX_SUCCESS
    a, b = rig.pair(0)
    assert rig.begin(0, ADD, r2m(0), a, b) == HELD
    rig.ports[1].two_phase = True
    k = Kernel(1, cast(Any, None), cast(Any, None), rig.pool, rig.ports[1])

    class RemovingPut:
        def tdx_pamt_put(self, k: Kernel, page: int) -> None:
            k.tdh_phymem_pamt_remove(tdx.align_down_2m(page) | tdx.TDX_PS_2M, [])

    put_and_judge(k, cast(Any, RemovingPut()), page_hpa(1, 1), rig.log)
    assert rig.kinds() == [PUT_FAILED] and k.contended == 1
    assert tdx.busy_cause(rig.log.records()[0].a & (1 << 64) - 1) == "contention"
    assert rig.end(0, ADD, r2m(0), a, b) == tdx.TDX_SUCCESS
    assert rig.call(1, REMOVE, r2m(1)) == tdx.TDX_SUCCESS  # released at the ADD's end


def test_a_use_of_a_pamt_less_range_meets_the_other_ranges_add(rig: Rig) -> None:
    a, b = rig.pair(0)  # b in range 1, which has no PAMT: the walk stops at its 2M entry
    assert rig.begin(0, ADD, r2m(0), a, b) == HELD
    # AUG of range 1 would promote that entry to exclusive: the shared holder makes it BUSY
    assert contended(rig.begin(1, AUG, page_hpa(1, 1) | tdx.TDX_PS_4K), tdx.OPERAND_ID_RCX)
    assert rig.end(0, ADD, r2m(0), a, b) == tdx.TDX_SUCCESS
    assert rig.kinds() == []


def test_uses_of_a_range_with_pamt_commute_with_the_other_ranges_add(rig: Rig) -> None:
    """The walk takes the pair page's own 4K entry shared, a page no CPU AUGs: an AUG of
    range 1 meets only the shared 2M entry (the footprint's precision rests on it)."""
    c, d = rig.pair(1)
    assert rig.call(1, ADD, r2m(1), c, d) == tdx.TDX_SUCCESS
    a, b = rig.pair(0)
    assert rig.begin(0, ADD, r2m(0), a, b) == HELD
    assert rig.call(1, AUG, page_hpa(1, 1) | tdx.TDX_PS_4K) == tdx.TDX_SUCCESS
    assert rig.end(0, ADD, r2m(0), a, b) == tdx.TDX_SUCCESS
    assert rig.kinds() == []


@pytest.mark.parametrize("variant", ["v6", "v6-locked"])
def test_the_c_twins_map_in_range_pool_pages_as_python_does(variant: str) -> None:
    """Two ranges, one CPU on each (workload seed 7): the C runtime turns every pool
    address, in either range, back into its page (a wrong inverse is a BUG that ends the CPU)."""
    from shmpamt.config import Scenario
    from shmpamt.explorer.session import Session
    from shmpamt.schedulers.random_walk import RandomWalk

    traces = []
    for name in (variant, f"{variant}.c"):
        with Session(Scenario(name, ranges=2)) as session:
            runs = []
            sched = RandomWalk(seed=7, max_executions=4)
            while sched.new_execution():
                ex = session.execute(sched)
                assert not ex.violations, ex.violations
                runs.append([(e.cpu, e.op, e.target, e.result) for e in ex.trace])
            traces.append(runs)
    pages = {e[3] for run in traces[0] for e in run if e[1] == "alloc_page" and e[3]}
    assert {range_of(p) for p in pages} == {0, 1}
    # Invariant: the twins are the same protocol, step for step, page for page.
    assert traces[0] == traces[1]
