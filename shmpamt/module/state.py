"""The TDX module's Dynamic PAMT state and the SEAMCALL handlers that change it.

State lives in shared memory so the runner can read it at quiescence, but only
the daemon writes it. Each handler follows the TDX module's own
(intel/tdx-module, ``src/vmm_dispatcher/api_calls/tdh_phymem_pamt_add.c``,
``tdh_phymem_pamt_remove.c``, ``tdh_mem_page_aug.c``,
``tdh_phymem_page_reclaim.c``; the walk is ``pamt_walk`` in
``src/common/memory_handlers/pamt_manager.c``) and is split where the real one
holds its locks: :func:`begin_seamcall` checks the operands and takes the PAMT
entry try-locks in the handler's order (any refusal, a held lock being
TDX_OPERAND_BUSY at once, releases what it took and ends the call there);
:func:`end_seamcall` makes the handler's state checks, changes the state and
releases every lock. ``apply_seamcall`` is both at once. All of them are
functions of (state, locks, pool, call), tested without any process.

The statuses are the module's (tdx.py); the ones that reveal a protocol slip
carry a finding (``add_present``, ``remove_absent``, ``remove_while_in_use``,
``use_without_pamt``). AUG of an assigned page and RECLAIM of an unassigned one
(TDX_PAGE_METADATA_INCORRECT) are worker bugs (the CPU loop gives every CPU its
own 4 KiB slots), not get/put protocol bugs, so they are refused but not
recorded. A PAMT.ADD pair page the caller does not own fails the bitmap
test-and-set (TDX_PAGE_NOT_FREE; the pool records ``pamt_pages_lost``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Final, Protocol

from shmpamt import tdx
from shmpamt.errors import IpcError
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import Segment, make_name
from shmpamt.machine.kernel import GUEST_BASE
from shmpamt.records.violations import (
    ADD_PRESENT,
    NO_RANGE,
    REMOVE_ABSENT,
    REMOVE_WHILE_IN_USE,
    USE_WITHOUT_PAMT,
)

KIND_MODULE_STATE: Final = 0x4D535441  # "MSTA"
MAX_RANGES: Final = 4096

# Statistics slots: calls per leaf, then injected faults per kind.
LEAF_SLOTS: Final[dict[int, int]] = {
    tdx.TDH_PHYMEM_PAMT_ADD: 0,
    tdx.TDH_PHYMEM_PAMT_REMOVE: 1,
    tdx.TDH_MEM_PAGE_AUG: 2,
    tdx.TDH_PHYMEM_PAGE_RECLAIM: 3,
    tdx.SHMPAMT_NOP: 4,
    tdx.SHMPAMT_STATUS: 5,
    tdx.SHMPAMT_RESET: 6,
}
OTHER_LEAF_SLOT: Final = 7
INJECTED_SLOT: Final[dict[str, int]] = {"busy": 8, "delay_before": 9, "delay_after": 10}
_COUNTERS: Final = 16

_HDR_WORDS: Final = 8  # nranges, pages_per_range, reset epoch, spare
_EPOCH: Final = 2
# Per-page flag bits: assigned, and "its last RECLAIM was refused by an injected BUSY".
ASSIGNED: Final = 1
RECLAIM_REFUSED: Final = 2
#: on a range's first page: injection refused a PAMT.REMOVE of the range this run
REMOVE_REFUSED: Final = 4


@dataclass(frozen=True)
class Finding:
    """A violation a SEAMCALL reveals; the daemon adds cpu and leaf when it logs it."""

    name: str
    range: int
    a: int = 0
    b: int = 0


@dataclass(frozen=True)
class Outcome:
    """Registers the module returns, plus what the call revealed."""

    status: int
    rcx: int = 0
    rdx: int = 0
    r8: int = 0
    findings: tuple[Finding, ...] = ()

    @property
    def registers(self) -> tuple[int, int, int, int]:
        return self.status, self.rcx, self.rdx, self.r8


INVALID: Final = Outcome(tdx.TDX_OPERAND_INVALID)
SUCCESS: Final = Outcome(tdx.TDX_SUCCESS)


@dataclass(frozen=True)
class ModuleStatistics:
    """Calls per leaf name and injected faults per kind, read from shared memory."""

    calls: tuple[tuple[str, int], ...]
    injected: tuple[tuple[str, int], ...]
    injected_total: int

    def calls_of(self, leaf: int) -> int:
        return dict(self.calls).get(tdx.leaf_name(leaf), 0)

    def injected_of(self, kind: str) -> int:
        return dict(self.injected).get(kind, 0)


class PageOwnership(Protocol):
    """The part of the page pool the module uses (PamtPagePool implements it)."""

    def contains(self, hpa: int) -> bool: ...

    def module_take(self, cpu: int, hpa: int, range_: int = NO_RANGE) -> bool: ...

    def module_give(self, cpu: int, hpa: int) -> None: ...


class ModuleState:
    """Per 2 MiB range: PAMT present, its page pair, assigned count; per 4 KiB page: assigned."""

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.name = segment.name
        hdr = segment.payload[: _HDR_WORDS * 4].cast("i")
        self.nranges = int(hdr[0])
        self.pages_per_range = int(hdr[1])
        self._hdr = hdr
        if (
            not 1 <= self.nranges <= MAX_RANGES
            or not 1 <= self.pages_per_range <= tdx.PAGES_PER_2M
            or segment.payload_size != self._size(self.nranges, self.pages_per_range)
        ):
            raise IpcError(f"{segment.name}: not a TDX module state segment")
        n, ppr = self.nranges, self.pages_per_range
        o_cnt, o_present, o_assigned, o_pamt, o_flags = self._layout(n, ppr)
        p = segment.payload
        self._counters = RefcountArray.over(segment, o_cnt, _COUNTERS)
        # Plain stores: the daemon is the only writer and holds the range lock.
        self._present = p[o_present : o_present + 4 * n].cast("i")
        self._assigned = p[o_assigned : o_assigned + 4 * n].cast("i")
        self._pamt = p[o_pamt : o_pamt + 16 * n].cast("q")
        self._flags = p[o_flags : o_flags + n * ppr]

    @staticmethod
    def _layout(n: int, ppr: int) -> tuple[int, int, int, int, int]:
        o_cnt = _HDR_WORDS * 4
        o_present = o_cnt + _COUNTERS * 4
        o_assigned = o_present + 4 * n
        o_pamt = (o_assigned + 4 * n + 7) // 8 * 8
        o_flags = o_pamt + 16 * n
        return o_cnt, o_present, o_assigned, o_pamt, o_flags

    @classmethod
    def _size(cls, n: int, ppr: int) -> int:
        return cls._layout(n, ppr)[4] + n * ppr

    @classmethod
    def create(cls, nranges: int, pages_per_range: int, token: str | None = None) -> ModuleState:
        if not 1 <= nranges <= MAX_RANGES:
            raise ValueError(f"nranges must be within 1..{MAX_RANGES}, got {nranges}")
        if not 1 <= pages_per_range <= tdx.PAGES_PER_2M:
            raise ValueError(f"pages_per_range must be within 1..{tdx.PAGES_PER_2M}")
        seg = Segment.create(
            make_name("modstate", token), KIND_MODULE_STATE, cls._size(nranges, pages_per_range)
        )
        try:
            hdr = seg.payload[: _HDR_WORDS * 4].cast("i")
            hdr[0] = nranges
            hdr[1] = pages_per_range
            hdr.release()
            return cls(seg)
        except BaseException:
            seg.close()
            raise

    @classmethod
    def attach(cls, name: str) -> ModuleState:
        seg = Segment.attach(name, KIND_MODULE_STATE)
        try:
            return cls(seg)
        except BaseException:
            seg.close()
            raise

    # -- reads (any process) ----------------------------------------------------------

    def pamt_present(self, r: int) -> bool:
        return bool(self._present[r])

    def assigned_count(self, r: int) -> int:
        return int(self._assigned[r])

    def page_assigned(self, r: int, j: int) -> bool:
        if not 0 <= j < self.pages_per_range:
            raise IndexError(f"page {j} outside 0..{self.pages_per_range - 1}")
        return bool(self._flags[r * self.pages_per_range + j] & ASSIGNED)

    def pamt_pages(self, r: int) -> tuple[int, int]:
        """The two PAMT pages the module holds for range ``r`` (0, 0 when absent)."""
        return int(self._pamt[2 * r]), int(self._pamt[2 * r + 1])

    def present_ranges(self) -> list[int]:
        return [r for r in range(self.nranges) if self._present[r]]

    def fault_held_ranges(self) -> list[int]:
        """Ranges with a page still assigned because injection refused its last RECLAIM.

        A CPU that cannot RECLAIM a page keeps it and its reference (it must not
        put a range with a page assigned), so at quiescence such a range still
        has a refcount and a PAMT: the injected fault's doing, not the variant's.
        Likewise a range whose PAMT.REMOVE injection refused: a variant that gives
        up on the REMOVE (v4 reverts its decrement, v6 republishes 1) leaves a
        PAMT with no user, as its authors chose, because of the fault.
        """
        ppr = self.pages_per_range
        held = ASSIGNED | RECLAIM_REFUSED
        return [
            r
            for r in range(self.nranges)
            if self._flags[r * ppr] & REMOVE_REFUSED
            or any(self._flags[r * ppr + j] & held == held for j in range(ppr))
        ]

    # -- writes (the daemon, holding the range's lock) -------------------------------

    def _set_present(self, r: int, p0: int, p1: int) -> None:
        self._pamt[2 * r] = p0
        self._pamt[2 * r + 1] = p1
        self._present[r] = 1

    def _set_absent(self, r: int) -> None:
        self._present[r] = 0
        self._pamt[2 * r] = 0
        self._pamt[2 * r + 1] = 0

    def _assign(self, r: int, j: int, on: bool) -> None:
        i = r * self.pages_per_range + j
        # the range's REMOVE_REFUSED mark (on its first page) outlives the page's own state
        self._flags[i] = (self._flags[i] & REMOVE_REFUSED) | (ASSIGNED if on else 0)
        self._assigned[r] += 1 if on else -1

    def _mark_reclaim_refused(self, r: int, j: int) -> None:
        i = r * self.pages_per_range + j
        if self._flags[i] & ASSIGNED:
            self._flags[i] |= RECLAIM_REFUSED  # cleared by the next RECLAIM or AUG

    def _mark_remove_refused(self, r: int) -> None:
        self._flags[r * self.pages_per_range] |= REMOVE_REFUSED  # until the next reset

    @property
    def epoch(self) -> int:
        """Bumped by every reset: the daemon drops the entry locks of calls a reset cut off."""
        return int(self._hdr[_EPOCH])

    def reset(self) -> None:
        """Every PAMT absent, no page assigned (statistics are kept)."""
        self._hdr[_EPOCH] = (self._hdr[_EPOCH] + 1) & 0x7FFFFFFF
        for r in range(self.nranges):
            self._set_absent(r)
            self._assigned[r] = 0
        self._flags[:] = bytes(len(self._flags))

    # -- statistics (atomic counters: several daemon threads update them) ----------------

    def count_call(self, leaf: int) -> None:
        self._counters.inc(LEAF_SLOTS.get(leaf, OTHER_LEAF_SLOT))

    def count_injected(self, kind: str) -> None:
        self._counters.inc(INJECTED_SLOT[kind])

    def statistics(self) -> ModuleStatistics:
        c = self._counters.snapshot()
        calls = tuple((tdx.leaf_name(leaf), c[s]) for leaf, s in LEAF_SLOTS.items())
        calls += (("other", c[OTHER_LEAF_SLOT]),)
        injected = tuple((k, c[s]) for k, s in INJECTED_SLOT.items())
        return ModuleStatistics(calls, injected, sum(v for _, v in injected))

    def close(self) -> None:
        for mv in (self._hdr, self._present, self._assigned, self._pamt, self._flags):
            mv.release()
        self._counters.close()
        self.segment.close()

    def __enter__(self) -> ModuleState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- operand decoding ------------------------------------------------------------------


def decode_2m(state: ModuleState, rcx: int) -> int | None:
    """Range index of a PAMT.ADD/REMOVE operand (2 MiB-aligned hpa | TDX_PS_2M), or None."""
    if rcx & (tdx.SZ_2M - 1) != tdx.TDX_PS_2M:
        return None
    off = (rcx & ~(tdx.SZ_2M - 1)) - GUEST_BASE
    r = off // tdx.SZ_2M
    return r if off >= 0 and r < state.nranges else None


def decode_4k(state: ModuleState, rcx: int) -> tuple[int, int] | None:
    """(range, page) of an AUG/RECLAIM operand (4 KiB-aligned hpa | TDX_PS_4K), or None."""
    if rcx & (tdx.PAGE_SIZE - 1) != tdx.TDX_PS_4K:
        return None
    off = rcx - GUEST_BASE
    r, within = divmod(off, tdx.SZ_2M)
    j = within // tdx.PAGE_SIZE
    if off < 0 or r >= state.nranges or j >= state.pages_per_range:
        return None
    return r, j


def target_range(state: ModuleState, leaf: int, rcx: int) -> int | None:
    """The range whose lock a call must hold (None: it touches no range's state)."""
    if leaf in (tdx.TDH_PHYMEM_PAMT_ADD, tdx.TDH_PHYMEM_PAMT_REMOVE):
        return decode_2m(state, rcx)
    if leaf in (tdx.TDH_MEM_PAGE_AUG, tdx.TDH_PHYMEM_PAGE_RECLAIM):
        rj = decode_4k(state, rcx)
        return None if rj is None else rj[0]
    if leaf == tdx.SHMPAMT_STATUS:
        return rcx if 0 <= rcx < state.nranges else None
    return None


# --- the transitions ---------------------------------------------------------------------


def note_injected_busy(state: ModuleState, leaf: int, rcx: int) -> None:
    """An injected BUSY answered ``leaf``; the caller holds ``target_range``'s lock.

    A refused RECLAIM leaves a trace (its page stays assigned), and so does a
    refused REMOVE (the variant's fallback leaves a PAMT behind):
    ``fault_held_ranges`` tells quiescence checks that the fault, not the
    protocol, kept that range in use.
    """
    if leaf == tdx.TDH_PHYMEM_PAGE_RECLAIM:
        rj = decode_4k(state, rcx)
        if rj is not None:
            state._mark_reclaim_refused(*rj)
    elif leaf == tdx.TDH_PHYMEM_PAMT_REMOVE:
        r = target_range(state, leaf, rcx)
        if r is not None:
            state._mark_remove_refused(r)


# --- the PAMT entries' locks ---------------------------------------------------------------

LEVEL_4K: Final = 0
LEVEL_2M: Final = 1
LEVEL_1G: Final = 2
_LEVEL_SHIFT: Final = 56
_EXCLUSIVE: Final = -1


def entry(level: int, hpa: int) -> int:
    """The PAMT entry covering ``hpa`` at ``level`` (one key per 4K/2M/1G frame)."""
    return (level << _LEVEL_SHIFT) | (hpa >> (12 + 9 * level))


def entry_name(key: int) -> str:
    level = key >> _LEVEL_SHIFT
    frame = key & ((1 << _LEVEL_SHIFT) - 1)
    return f"{('4K', '2M', '1G')[level]} entry {frame:#x}"


class PamtLocks:
    """The shared/exclusive try-lock of every PAMT entry (the daemon's threads share it).

    As in the module, a lock never waits: taking one that another call holds in
    a conflicting mode fails at once, and the handler answers TDX_OPERAND_BUSY.
    A count per entry: >0 shared holders, -1 exclusive, absent free.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[int, int] = {}

    def try_shared(self, key: int) -> bool:
        with self._mutex:
            n = self._held.get(key, 0)
            if n < 0:
                return False
            self._held[key] = n + 1
            return True

    def try_exclusive(self, key: int) -> bool:
        with self._mutex:
            if key in self._held:
                return False
            self._held[key] = _EXCLUSIVE
            return True

    def try_promote(self, key: int) -> bool:
        """A shared holder becomes the exclusive one, if it is the only holder."""
        with self._mutex:
            # Invariant: only a shared holder promotes.
            assert self._held.get(key, 0) > 0, entry_name(key)
            if self._held[key] != 1:
                return False
            self._held[key] = _EXCLUSIVE
            return True

    def release(self, key: int, exclusive: bool) -> None:
        with self._mutex:
            n = self._held.get(key, 0)
            # Invariant: a call releases exactly the locks it took, in the mode it took them.
            assert (n == _EXCLUSIVE) if exclusive else (n > 0), (entry_name(key), n)
            if exclusive or n == 1:
                del self._held[key]
            else:
                self._held[key] = n - 1

    def clear(self) -> None:
        """Drop every lock (the rig was reset: no call is between its steps any more)."""
        with self._mutex:
            self._held.clear()

    def held(self) -> dict[int, int]:
        """Entry -> holders (-1: exclusive); empty whenever no call is between its steps."""
        with self._mutex:
            return dict(self._held)


@dataclass
class Held:
    """A call between its begin and end steps: its operands and the locks it holds."""

    leaf: int
    rcx: int
    rdx: int
    r8: int
    taken: list[tuple[int, bool]] = field(default_factory=list)

    def release(self, locks: PamtLocks) -> None:
        while self.taken:
            key, exclusive = self.taken.pop()
            locks.release(key, exclusive)


def _range_of_hpa(state: ModuleState, hpa: int) -> int | None:
    """Module range of a guest address (None: memory whose PAMT the module never adds)."""
    off = hpa - GUEST_BASE
    r = off // tdx.SZ_2M
    return r if off >= 0 and r < state.nranges else None


def _has_pamt(state: ModuleState, hpa: int) -> bool:
    r = _range_of_hpa(state, hpa)
    return r is not None and state.pamt_present(r)


def _walk(
    state: ModuleState, locks: PamtLocks, held: Held, hpa: int, target: int, exclusive: bool
) -> bool:
    """The module's PAMT walk down to ``target`` (or the leaf above it); False = BUSY.

    1G shared; 2M shared, promoted to exclusive if the walk ends there with an
    exclusive leaf lock (the target is 2M, or the range has no PAMT pages to
    walk into); else the 4K entry in the leaf mode. On BUSY the walk's own
    locks are released, the caller's earlier ones are not.
    """
    mark = len(held.taken)
    steps: list[tuple[int, str]] = [
        (entry(LEVEL_1G, hpa), "shared"),
        (entry(LEVEL_2M, hpa), "shared"),
    ]
    leaf_2m = target == LEVEL_2M or not _has_pamt(state, hpa)
    if leaf_2m and exclusive:
        steps.append((entry(LEVEL_2M, hpa), "promote"))
    elif not leaf_2m:
        steps.append((entry(LEVEL_4K, hpa), "exclusive" if exclusive else "shared"))
    for key, how in steps:
        if how == "shared":
            ok = locks.try_shared(key)
        elif how == "exclusive":
            ok = locks.try_exclusive(key)
        else:
            ok = locks.try_promote(key)
        if not ok:
            while len(held.taken) > mark:
                k, x = held.taken.pop()
                locks.release(k, x)
            return False
        if how == "promote":
            held.taken[-1] = (key, True)
        else:
            held.taken.append((key, how == "exclusive"))
    return True


#: contention: the module names the operand whose entry another call holds
BUSY_RCX: Final = Outcome(tdx.TDX_OPERAND_BUSY | tdx.OPERAND_ID_RCX)
_BUSY_PAIR: Final = (
    Outcome(tdx.TDX_OPERAND_BUSY | tdx.OPERAND_ID_RDX),
    Outcome(tdx.TDX_OPERAND_BUSY | tdx.OPERAND_ID_R8),
)
ADDR_RANGE_ERROR: Final = Outcome(tdx.TDX_OPERAND_ADDR_RANGE_ERROR)
METADATA_INCORRECT: Final = Outcome(tdx.TDX_PAGE_METADATA_INCORRECT)
_PHASED: Final = frozenset(
    {
        tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE,
        tdx.TDH_MEM_PAGE_AUG,
        tdx.TDH_PHYMEM_PAGE_RECLAIM,
    }
)


def begin_seamcall(
    state: ModuleState,
    locks: PamtLocks,
    pool: PageOwnership,
    leaf: int,
    rcx: int,
    rdx: int,
    r8: int,
) -> Outcome | Held:
    """Operand checks and try-locks, in the handler's order: a refusal, or the held call."""
    held = Held(leaf, rcx, rdx, r8)
    if leaf not in _PHASED:
        return held  # the rig's own leaves take no PAMT lock
    if leaf == tdx.TDH_PHYMEM_PAMT_ADD:
        r = decode_2m(state, rcx)
        if r is None:
            return INVALID
        for hpa in (rdx, r8):
            if hpa % tdx.PAGE_SIZE:
                return INVALID
            if not pool.contains(hpa) and _range_of_hpa(state, hpa) is None:
                return ADDR_RANGE_ERROR  # outside every TDMR
        target = rcx & ~(tdx.SZ_2M - 1)
        if not _walk(state, locks, held, target, LEVEL_2M, exclusive=True):
            return BUSY_RCX
        for busy, hpa in zip(_BUSY_PAIR, (rdx, r8), strict=True):
            # a pair page in another 2 MiB range: its own walk, 4K shared
            if tdx.align_down_2m(hpa) != target and not _walk(
                state, locks, held, hpa, LEVEL_4K, exclusive=False
            ):
                held.release(locks)
                return busy
        return held
    if leaf == tdx.TDH_PHYMEM_PAMT_REMOVE:
        if decode_2m(state, rcx) is None:
            return INVALID
        if not _walk(state, locks, held, rcx & ~(tdx.SZ_2M - 1), LEVEL_2M, exclusive=True):
            return BUSY_RCX
        return held
    # AUG, RECLAIM: the page's 4K entry exclusive
    if decode_4k(state, rcx) is None:
        return INVALID
    if not _walk(state, locks, held, rcx & ~(tdx.PAGE_SIZE - 1), LEVEL_4K, exclusive=True):
        return BUSY_RCX
    return held


def end_seamcall(
    state: ModuleState, locks: PamtLocks, pool: PageOwnership, cpu: int, held: Held
) -> Outcome:
    """The handler's state checks and change, then every lock released (on every exit)."""
    try:
        leaf, rcx, rdx, r8 = held.leaf, held.rcx, held.rdx, held.r8
        if leaf == tdx.TDH_PHYMEM_PAMT_ADD:
            return _pamt_add(state, pool, cpu, rcx, rdx, r8)
        if leaf == tdx.TDH_PHYMEM_PAMT_REMOVE:
            return _pamt_remove(state, pool, cpu, rcx)
        if leaf == tdx.TDH_MEM_PAGE_AUG:
            return _page_aug(state, rcx)
        if leaf == tdx.TDH_PHYMEM_PAGE_RECLAIM:
            return _page_reclaim(state, rcx)
        if leaf == tdx.SHMPAMT_NOP:
            return SUCCESS
        if leaf == tdx.SHMPAMT_STATUS:
            if not 0 <= rcx < state.nranges:
                return INVALID
            present, n = int(state.pamt_present(rcx)), state.assigned_count(rcx)
            return Outcome(tdx.TDX_SUCCESS, 0, present, n)
        if leaf == tdx.SHMPAMT_RESET:
            state.reset()  # the caller holds every range lock
            return SUCCESS
        return INVALID
    finally:
        held.release(locks)


def apply_seamcall(
    state: ModuleState,
    pool: PageOwnership,
    cpu: int,
    leaf: int,
    rcx: int,
    rdx: int,
    r8: int,
    locks: PamtLocks | None = None,
) -> Outcome:
    """One SEAMCALL by ``cpu`` as one step: begin and end with nothing in between."""
    lk = PamtLocks() if locks is None else locks
    got = begin_seamcall(state, lk, pool, leaf, rcx, rdx, r8)
    if isinstance(got, Outcome):
        return got
    return end_seamcall(state, lk, pool, cpu, got)


def _pair_page_in_use(state: ModuleState, hpa: int) -> bool:
    """The pair page's PAMT entry is not free: a 4 KiB page assigned to a TD."""
    r = _range_of_hpa(state, hpa)
    if r is None or not state.pamt_present(r):
        return False  # the walk stopped at a free 2M leaf
    j = (hpa - GUEST_BASE) % tdx.SZ_2M // tdx.PAGE_SIZE
    return j < state.pages_per_range and state.page_assigned(r, j)


def _pamt_add(
    state: ModuleState, pool: PageOwnership, cpu: int, rcx: int, rdx: int, r8: int
) -> Outcome:
    r = decode_2m(state, rcx)
    assert r is not None  # begin checked the operand
    if state.pamt_present(r):
        # Invariant: PAMT.ADD is issued only for a range whose PAMT is absent.
        return Outcome(tdx.TDX_HPA_RANGE_NOT_FREE, findings=(Finding(ADD_PRESENT, r, a=rcx),))
    target = rcx & ~(tdx.SZ_2M - 1)
    for hpa in (rdx, r8):
        if tdx.align_down_2m(hpa) != target and _pair_page_in_use(state, hpa):
            return Outcome(tdx.TDX_PAGE_NOT_FREE)
    # The PAMT page bitmap's test-and-set: here the pool's owner word (module = set).
    if not pool.contains(rdx) or not pool.module_take(cpu, rdx, r):
        return Outcome(tdx.TDX_PAGE_NOT_FREE)
    if rdx == r8 or not pool.contains(r8) or not pool.module_take(cpu, r8, r):
        pool.module_give(cpu, rdx)  # the first bit rolled back
        return Outcome(tdx.TDX_PAGE_NOT_FREE)
    state._set_present(r, rdx, r8)
    return SUCCESS


def _pamt_remove(state: ModuleState, pool: PageOwnership, cpu: int, rcx: int) -> Outcome:
    r = decode_2m(state, rcx)
    assert r is not None
    if not state.pamt_present(r):
        # Invariant: PAMT.REMOVE is issued only for a range whose PAMT is present.
        return Outcome(tdx.TDX_NO_PAMT_PAGE_PAIR, findings=(Finding(REMOVE_ABSENT, r, a=rcx),))
    n = state.assigned_count(r)
    if n:
        # Invariant: PAMT.REMOVE is issued only when no 4 KiB page of the range is assigned.
        return Outcome(
            tdx.TDX_PAMT_PAGE_NOT_EMPTY, findings=(Finding(REMOVE_WHILE_IN_USE, r, a=n),)
        )
    p0, p1 = state.pamt_pages(r)
    state._set_absent(r)
    pool.module_give(cpu, p0)
    pool.module_give(cpu, p1)
    return Outcome(tdx.TDX_SUCCESS, 0, p0, p1)


def _page_aug(state: ModuleState, rcx: int) -> Outcome:
    rj = decode_4k(state, rcx)
    assert rj is not None
    r, j = rj
    if not state.pamt_present(r):
        # Invariant: a 4 KiB page is assigned only while its range's PAMT is present.
        return Outcome(
            tdx.TDX_MISSING_PAMT_PAGE_PAIR, findings=(Finding(USE_WITHOUT_PAMT, r, a=rcx),)
        )
    if state.page_assigned(r, j):
        return METADATA_INCORRECT  # a worker bug, not a protocol bug
    state._assign(r, j, True)
    return SUCCESS


def _page_reclaim(state: ModuleState, rcx: int) -> Outcome:
    rj = decode_4k(state, rcx)
    assert rj is not None
    r, j = rj
    if not state.pamt_present(r):
        # Invariant: a 4 KiB page is used only while its range's PAMT is present.
        return Outcome(
            tdx.TDX_PAGE_METADATA_INCORRECT, findings=(Finding(USE_WITHOUT_PAMT, r, a=rcx),)
        )
    if not state.page_assigned(r, j):
        return METADATA_INCORRECT  # a worker bug, not a protocol bug
    state._assign(r, j, False)
    return SUCCESS
