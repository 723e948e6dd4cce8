"""The TDX module's rules, one test each, by planted misuse through a real daemon process.

Every test talks to a running module over real SEAMCALL ports, two CPUs, and
issues a call's begin and end requests itself (REQ_BEGIN / REQ_END), so it can
park one CPU's call with its PAMT entry locks held while the other CPU calls:
what the module answers is what a CPU would see in stress or explore.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest

from shmpamt import tdx
from shmpamt.engine.workload import put_and_judge
from shmpamt.machine.ipc import new_token
from shmpamt.machine.kernel import Kernel, page_hpa
from shmpamt.machine.pages import PamtPagePool
from shmpamt.machine.seamcall import REQ_BEGIN, REQ_END, REQ_INJECT_BUSY, SeamcallPort
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.daemon import TdxModule
from shmpamt.module.faults import FaultPlan
from shmpamt.records.violations import (
    ADD_PRESENT,
    PUT_FAILED,
    REMOVE_ABSENT,
    USE_WITHOUT_PAMT,
    describe,
)

ADD, REMOVE = tdx.TDH_PHYMEM_PAMT_ADD, tdx.TDH_PHYMEM_PAMT_REMOVE
AUG, RECLAIM = tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM
HELD = tdx.SHMPAMT_LOCKS_HELD


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
        """Both steps with nothing in between."""
        got = self.begin(cpu, leaf, rcx, rdx, r8)
        return got if got != HELD else self.end(cpu, leaf, rcx, rdx, r8)

    def pair(self, cpu: int) -> tuple[int, int]:
        a, b = self.pool.alloc(cpu), self.pool.alloc(cpu)
        assert a is not None and b is not None
        return a, b

    def add(self, cpu: int, r: int) -> tuple[int, int]:
        a, b = self.pair(cpu)
        assert self.call(cpu, ADD, r2m(r), a, b) == tdx.TDX_SUCCESS
        return a, b

    def kinds(self) -> list[str]:
        return [v.name for v in self.log.records()]


@pytest.fixture
def rig() -> Iterator[Rig]:
    token = new_token()
    log = ViolationLog.create(capacity=64, token=token)
    pool = PamtPagePool.create(16, log, token, cpus=2)
    try:
        with (
            TdxModule.start(2, 2, 4, pool, log, FaultPlan.none(), token) as m,
            contextlib.ExitStack() as stack,
        ):
            ports = [stack.enter_context(SeamcallPort.attach(m.names, c)) for c in range(2)]
            yield Rig(m, pool, log, ports)
    finally:
        pool.close()
        log.close()


def contended(status: int, operand: int = tdx.OPERAND_ID_RCX) -> bool:
    return status == tdx.TDX_OPERAND_BUSY | operand and tdx.busy_cause(status) == "contention"


# --- locks ----------------------------------------------------------------------------------


def test_add_holds_the_2m_entry_exclusive_until_its_end(rig: Rig) -> None:
    rig.add(1, 1)  # range 1 has a PAMT, so a page there can be used
    a, b = rig.pair(0)
    assert rig.begin(0, ADD, r2m(0), a, b) == HELD
    c, d = rig.pair(1)
    # Invariant: a try-lock never waits: a held entry is TDX_OPERAND_BUSY at once.
    assert contended(rig.begin(1, ADD, r2m(0), c, d))
    assert contended(rig.begin(1, REMOVE, r2m(0)))
    assert contended(rig.begin(1, AUG, page_hpa(0, 1)))
    assert rig.call(1, AUG, page_hpa(1, 1)) == tdx.TDX_SUCCESS  # another range: free
    assert rig.end(0, ADD, r2m(0), a, b) == tdx.TDX_SUCCESS
    assert rig.call(1, AUG, page_hpa(0, 1)) == tdx.TDX_SUCCESS  # released at the end
    assert rig.kinds() == []


def test_remove_holds_the_2m_entry_exclusive_until_its_end(rig: Rig) -> None:
    rig.add(0, 0)
    assert rig.begin(0, REMOVE, r2m(0)) == HELD
    assert contended(rig.begin(1, AUG, page_hpa(0, 1)))
    assert contended(rig.begin(1, REMOVE, r2m(0)))
    assert rig.end(0, REMOVE, r2m(0)) == tdx.TDX_SUCCESS
    assert rig.call(1, REMOVE, r2m(0)) == tdx.TDX_NO_PAMT_PAGE_PAIR


def test_aug_and_reclaim_share_the_2m_entry_and_exclude_add_and_remove(rig: Rig) -> None:
    rig.add(0, 0)
    assert rig.begin(0, AUG, page_hpa(0, 0)) == HELD
    # Two uses of one range hold it shared together.
    assert rig.begin(1, AUG, page_hpa(0, 1)) == HELD
    assert rig.end(1, AUG, page_hpa(0, 1)) == tdx.TDX_SUCCESS
    assert contended(rig.begin(1, REMOVE, r2m(0)))
    c, d = rig.pair(1)
    assert contended(rig.begin(1, ADD, r2m(0), c, d))
    assert rig.end(0, AUG, page_hpa(0, 0)) == tdx.TDX_SUCCESS
    assert rig.begin(1, RECLAIM, page_hpa(0, 1)) == HELD
    assert contended(rig.begin(0, REMOVE, r2m(0)))
    assert rig.end(1, RECLAIM, page_hpa(0, 1)) == tdx.TDX_SUCCESS


def test_a_use_of_a_range_without_pamt_promotes_the_2m_entry(rig: Rig) -> None:
    # No PAMT pages to walk into: the walk ends at the 2M leaf and takes it exclusive.
    assert rig.begin(0, AUG, page_hpa(0, 0)) == HELD
    assert contended(rig.begin(1, AUG, page_hpa(0, 1)))
    assert rig.end(0, AUG, page_hpa(0, 0)) == tdx.TDX_MISSING_PAMT_PAGE_PAIR
    assert rig.kinds() == [USE_WITHOUT_PAMT]


def test_a_pair_page_in_another_range_is_walked_shared(rig: Rig) -> None:
    """The pair's page lies in range 1, whose REMOVE holds its 2M entry: ADD of range 0
    is BUSY on that operand. Two ranges interact."""
    rig.add(1, 1)
    assert rig.begin(1, REMOVE, r2m(1)) == HELD
    a = rig.pool.alloc(0)
    assert a is not None
    assert contended(rig.begin(0, ADD, r2m(0), a, page_hpa(1, 3)), tdx.OPERAND_ID_R8)
    assert rig.end(1, REMOVE, r2m(1)) == tdx.TDX_SUCCESS
    assert rig.module.state.present_ranges() == []


def test_every_exit_releases_the_locks(rig: Rig) -> None:
    rig.add(0, 0)
    c, d = rig.pair(1)
    assert rig.begin(1, ADD, r2m(0), c, d) == HELD
    assert rig.end(1, ADD, r2m(0), c, d) == tdx.TDX_HPA_RANGE_NOT_FREE  # a refusal at end
    assert rig.call(0, AUG, page_hpa(0, 0)) == tdx.TDX_SUCCESS  # nothing left held
    assert rig.kinds() == [ADD_PRESENT]


def test_one_step_calls_meet_the_same_locks(rig: Rig) -> None:
    a, b = rig.pair(0)
    assert rig.begin(0, ADD, r2m(0), a, b) == HELD
    c, d = rig.pair(1)
    assert contended(rig.ports[1].call(ADD, r2m(0), c, d)[0])


def test_an_injected_busy_is_told_from_contention(rig: Rig) -> None:
    a, b = rig.pair(0)
    got = rig.ports[0].call(ADD, r2m(0), a, b, REQ_INJECT_BUSY | REQ_BEGIN)[0]
    assert got == tdx.TDX_OPERAND_BUSY and tdx.busy_cause(got) == "injected"
    assert rig.begin(1, AUG, page_hpa(0, 1)) == HELD  # it took no lock
    assert tdx.describe_status(got) == "TDX_OPERAND_BUSY (injected)"
    assert tdx.describe_status(tdx.TDX_OPERAND_BUSY | 1) == "TDX_OPERAND_BUSY (contention)"


def test_a_reset_drops_the_locks_of_calls_it_cut_off(rig: Rig) -> None:
    a, b = rig.pair(0)
    assert rig.begin(0, ADD, r2m(0), a, b) == HELD
    rig.module.reset(idle=True)  # explore ends an execution with cpu 0 between its steps
    assert rig.call(1, AUG, page_hpa(0, 1)) == tdx.TDX_MISSING_PAMT_PAGE_PAIR


# --- statuses -------------------------------------------------------------------------------


def test_add_operands_outside_every_tdmr_are_an_address_range_error(rig: Rig) -> None:
    a, _ = rig.pair(0)
    assert rig.call(0, ADD, r2m(0), a, 1 << 45) == tdx.TDX_OPERAND_ADDR_RANGE_ERROR
    assert rig.call(0, ADD, r2m(0), a, (1 << 45) + 8) == tdx.TDX_OPERAND_INVALID  # misaligned


def test_add_of_a_pair_page_given_twice_fails_the_bitmap_and_rolls_back(rig: Rig) -> None:
    a, _ = rig.pair(0)
    assert rig.call(0, ADD, r2m(0), a, a) == tdx.TDX_PAGE_NOT_FREE
    assert rig.pool.owner(a) == 1  # the first bit was cleared again: still cpu 0's
    assert not rig.module.state.pamt_present(0)


def test_add_of_a_pair_page_in_use_is_page_not_free(rig: Rig) -> None:
    rig.add(1, 1)
    assert rig.call(1, AUG, page_hpa(1, 3)) == tdx.TDX_SUCCESS
    a = rig.pool.alloc(0)
    assert rig.call(0, ADD, r2m(0), a or 0, page_hpa(1, 3)) == tdx.TDX_PAGE_NOT_FREE


def test_the_refusals_name_the_module_statuses(rig: Rig) -> None:
    assert rig.call(0, REMOVE, r2m(0)) == tdx.TDX_NO_PAMT_PAGE_PAIR
    assert rig.call(0, AUG, page_hpa(0, 0)) == tdx.TDX_MISSING_PAMT_PAGE_PAIR
    assert rig.call(0, RECLAIM, page_hpa(0, 0)) == tdx.TDX_PAGE_METADATA_INCORRECT
    rig.add(0, 0)
    assert rig.call(0, AUG, page_hpa(0, 0)) == tdx.TDX_SUCCESS
    assert rig.call(0, AUG, page_hpa(0, 0)) == tdx.TDX_PAGE_METADATA_INCORRECT
    assert rig.call(1, REMOVE, r2m(0)) == tdx.TDX_PAMT_PAGE_NOT_EMPTY
    assert rig.call(1, RECLAIM, page_hpa(0, 1)) == tdx.TDX_PAGE_METADATA_INCORRECT
    c, d = rig.pair(1)
    assert rig.call(1, ADD, r2m(0), c, d) == tdx.TDX_HPA_RANGE_NOT_FREE


# --- explore: contention arises on its own --------------------------------------------------


def test_kai_explore_shows_a_busy_from_contention_without_faults() -> None:
    """No --faults: a BUSY can only be another CPU's call holding the entry, and the
    replayed timeline says so."""
    import shmpamt.api as api

    r = api.explore("kai", strategy="dpor", rounds=2, budget=30.0, seed=1)
    shown = []
    for f in r.findings:
        p = subprocess.run(
            [sys.executable, "-m", "shmpamt", "replay", f.schedule],
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown.append(p.stdout)
        if "TDX_OPERAND_BUSY (contention)" in p.stdout:
            break
    assert any("TDX_OPERAND_BUSY (contention)" in s for s in shown), [f.kind for f in r.findings]
    assert not any("(injected)" in s for s in shown)


# --- the series' requirement: the free path never fails ------------------------------------


class _RemovingPut:
    """A put that is just its PAMT.REMOVE, whatever the module answers (a planted misuse
    of the variant interface: no refcount, so nothing but the REMOVE is judged)."""

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        k.tdh_phymem_pamt_remove(tdx.align_down_2m(page) | tdx.TDX_PS_2M, [])


def _kernel(rig: Rig, cpu: int) -> Kernel:
    rig.ports[cpu].two_phase = True
    return Kernel(cpu, cast(Any, None), cast(Any, None), rig.pool, rig.ports[cpu])


def test_a_put_whose_remove_meets_another_cpus_call_is_put_failed(rig: Rig) -> None:
    rig.add(0, 0)
    assert rig.begin(1, AUG, page_hpa(0, 1)) == HELD  # cpu 1 holds the 2M entry shared
    k = _kernel(rig, 0)
    put_and_judge(k, cast(Any, _RemovingPut()), page_hpa(0, 0), rig.log)
    assert rig.kinds() == [PUT_FAILED] and k.contended == 1
    v = rig.log.records()[0]
    assert tdx.busy_cause(v.a & (1 << 64) - 1) == "contention" and "(contention)" in describe(v)


def test_a_put_whose_remove_succeeds_or_was_refused_by_a_fault_is_fine(rig: Rig) -> None:
    rig.add(0, 0)
    k = _kernel(rig, 0)
    put_and_judge(k, cast(Any, _RemovingPut()), page_hpa(0, 0), rig.log)
    assert rig.kinds() == [] and not rig.module.state.pamt_present(0)
    # an injected BUSY is the fault plan's doing, not the free path's
    assert k.removes_failed == 0
    k._judge_remove(REMOVE, tdx.TDX_OPERAND_BUSY)
    assert k.removes_failed == 0
    # a REMOVE of an absent PAMT is the module's own finding (remove_absent), not again put_failed
    put_and_judge(k, cast(Any, _RemovingPut()), page_hpa(0, 0), rig.log)
    assert rig.kinds() == [REMOVE_ABSENT]


def test_the_c_header_gives_every_status_the_value_tdx_py_gives_it() -> None:
    import re
    from pathlib import Path

    import shmpamt

    header = Path(shmpamt.__file__).parent / "include" / "shmpamt" / "kernel.h"
    defined = {
        m[1]: int(m[2], 16)
        for m in re.finditer(r"^#define (TDX_\w+) (0x[0-9A-F]+)ULL$", header.read_text(), re.M)
    }
    for value, name in tdx.STATUS_NAMES.items():
        if name.startswith("TDX_") and name not in ("TDX_SUCCESS", "TDX_SW_ERROR"):
            assert defined.get(name) == value, name
