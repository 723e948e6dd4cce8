"""The PAMT page pool: 4 KiB pages whose owner (free, a CPU, the TDX module) is a shared fact.

The kernel gets PAMT pages from ``alloc_page()`` and hands them to the module
with PAMT.ADD; the module gives them back on PAMT.REMOVE. A protocol slip shows
up as a page with the wrong owner, so every transfer is one compare-and-exchange
on the page's owner word: a double free or a free of a module-owned page is
caught at the moment it happens, and leaks are whatever CPUs still own at
quiescence.

Owner codes: 0 = free, ``cpu + 1`` = owned by CPU ``cpu``, -1 = owned by the
TDX module. Pool page ``i`` lives where machine/pool_layout.py puts it: in the
guest ranges' spare slots (a pair may come from the range it is added for or from
another one) or, without ranges, at ``POOL_BASE + i * 4096``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shmpamt import tdx
from shmpamt.errors import IpcError
from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import Segment, make_name
from shmpamt.machine.pool_layout import PoolLayout
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.records.violations import (
    LOST_DOUBLE_FREE,
    LOST_FREED_BY_MODULE_OWNER,
    LOST_LEAKED,
    LOST_NOT_OWNED,
    NO_RANGE,
    PAMT_PAGES_LOST,
)

KIND_POOL: Final = 0x504F4F4C  # "POOL"
FREE: Final = 0
MODULE: Final = -1
MAX_PAGES: Final = 1 << 16

# header words
_NPAGES: Final = 0
_STRIDE: Final = 1  # partitions: CPU c allocates pages i with i % stride == c % stride first
_ALLOCS: Final = 2
_FREES: Final = 3
_EXHAUSTED: Final = 4  # allocs that found no free page
_RANGES: Final = 5  # guest ranges holding pool pages (PoolLayout.ranges)
_ROWS: Final = 6  # pool pages per guest range (PoolLayout.rows)
_STRAYED: Final = 7  # allocs not served from the CPU's own partition (also the exhausted)
_HDR_WORDS: Final = 8


@dataclass(frozen=True)
class PoolStatistics:
    npages: int
    free: int
    cpu_owned: int
    module_owned: int
    allocs: int
    frees: int
    exhausted: int
    #: allocs that found their own partition empty (took another's page, or none)
    strayed: int = 0


class PamtPagePool:
    """A fixed pool of PAMT pages in shared memory, usable from any process."""

    def __init__(self, segment: Segment, log: ViolationLog) -> None:
        self.segment = segment
        self.name = segment.name
        self._log = log
        self._hdr = RefcountArray.over(segment, 0, _HDR_WORDS)
        n = self._hdr.read(_NPAGES)
        if not 1 <= n <= MAX_PAGES or segment.payload_size != (_HDR_WORDS + n) * 4:
            self._hdr.close()
            raise IpcError(f"{segment.name}: not a PAMT page pool ({n} pages)")
        self.npages = n
        stride, ranges, rows = (self._hdr.read(w) for w in (_STRIDE, _RANGES, _ROWS))
        if not 1 <= stride <= n or ranges < 0 or not 0 <= rows <= tdx.PAGES_PER_2M:
            self._hdr.close()
            raise IpcError(
                f"{segment.name}: not a PAMT page pool (layout {stride}/{ranges}/{rows})"
            )
        self.layout = PoolLayout(n, stride, ranges, rows)
        self._owners = RefcountArray.over(segment, _HDR_WORDS * 4, n)

    @classmethod
    def create(
        cls,
        npages: int,
        log: ViolationLog,
        token: str | None = None,
        cpus: int = 1,
        ranges: int = 0,
        pages_per_range: int = tdx.PAGES_PER_2M,
    ) -> PamtPagePool:
        """``cpus`` partitions: each CPU allocates from its own first (see :meth:`alloc`).
        ``ranges``: the guest ranges whose slots above ``pages_per_range`` hold pool pages
        (0: every page at POOL_BASE)."""
        if isinstance(npages, bool) or not isinstance(npages, int) or not 1 <= npages <= MAX_PAGES:
            raise ValueError(f"pool size must be an int in 1..{MAX_PAGES}, got {npages!r}")
        if not 1 <= cpus <= npages:
            raise ValueError(f"partitions must be within 1..{npages}, got {cpus!r}")
        layout = PoolLayout.in_ranges(npages, cpus, ranges, pages_per_range)
        if ranges < 0 or not 0 <= layout.rows <= tdx.PAGES_PER_2M:
            raise ValueError(f"no pool layout for {ranges} ranges of {pages_per_range} pages")
        seg = Segment.create(make_name("pamtpool", token), KIND_POOL, (_HDR_WORDS + npages) * 4)
        try:
            hdr = RefcountArray.over(seg, 0, _HDR_WORDS)
            hdr.set(_NPAGES, npages)
            hdr.set(_STRIDE, cpus)
            hdr.set(_RANGES, ranges)
            hdr.set(_ROWS, layout.rows)
            return cls(seg, log)
        except BaseException:
            seg.close()
            raise

    @classmethod
    def attach(cls, name: str, log: ViolationLog) -> PamtPagePool:
        seg = Segment.attach(name, KIND_POOL)
        try:
            return cls(seg, log)
        except BaseException:
            seg.close()
            raise

    # -- addresses --------------------------------------------------------------

    def contains(self, hpa: int) -> bool:
        """True if ``hpa`` is the address of a page of this pool."""
        return self.layout.index(hpa) is not None

    def hpa(self, index: int) -> int:
        return self.layout.hpa(index)

    def index(self, hpa: int) -> int:
        """The pool index of ``hpa``; -1 if it is no pool page (a free_page's target)."""
        i = self.layout.index(hpa)
        return -1 if i is None else i

    def _index(self, hpa: int) -> int:
        i = self.layout.index(hpa)
        if i is None:
            raise ValueError(f"{hpa:#x} is not a PAMT pool page")
        return i

    # -- the allocator (CPU side) ----------------------------------------------

    def alloc(self, cpu: int) -> int | None:
        """Claim a free page for ``cpu``; None when the pool is exhausted (alloc_page's NULL).

        First fit in the CPU's own partition (pages ``i % stride == cpu % stride``),
        then anywhere. With partitions, two CPUs' allocations touch disjoint pages and
        commute, which is what lets a partial-order search treat them as independent
        (the pool is sized so that a partition does not run dry in explore).
        """
        n = self.npages
        stride = self._hdr.read(_STRIDE)
        owners = self._owners
        for own, scan in ((True, range(cpu % stride, n, stride)), (False, range(n))):
            if not own:
                self._hdr.inc(_STRAYED)
            for i in scan:
                # Lock-free claim: the cmpxchg decides between CPUs racing for page i.
                if owners.read(i) == FREE and owners.cmpxchg(i, FREE, cpu + 1) == FREE:
                    self._hdr.inc(_ALLOCS)
                    return self.layout.hpa(i)
        self._hdr.inc(_EXHAUSTED)
        return None

    @property
    def strayed(self) -> int:
        """Allocs since the last reset that found their own partition empty."""
        return self._hdr.read(_STRAYED)

    def partition(self, hpa: int) -> int:
        """The partition a pool page belongs to (the CPU that allocates it first)."""
        return self._index(hpa) % self._hdr.read(_STRIDE)

    def free(self, cpu: int, hpa: int) -> None:
        """``__free_page`` by ``cpu``; a free that is not the owner's own is recorded, not raised.

        Freeing a page another CPU owns can only mean this CPU freed it earlier
        (it was reallocated since), so it is reported as a double free with the
        current owner's code in ``c``; the page stays with its rightful owner.
        """
        i = self._index(hpa)
        seen = self._owners.cmpxchg(i, cpu + 1, FREE)
        if seen == cpu + 1:
            self._hdr.inc(_FREES)
            return
        # Invariant: only the CPU that owns a page may free it.
        why = LOST_FREED_BY_MODULE_OWNER if seen == MODULE else LOST_DOUBLE_FREE
        self._log.record(PAMT_PAGES_LOST, cpu=cpu, a=hpa, b=why, c=seen)

    # -- ownership transfers by the TDX module ------------------------------------

    def module_take(self, cpu: int, hpa: int, range_: int = NO_RANGE) -> bool:
        """PAMT.ADD: ``cpu``'s page becomes the module's; False if ``cpu`` did not own it."""
        i = self._index(hpa)
        seen = self._owners.cmpxchg(i, cpu + 1, MODULE)
        if seen == cpu + 1:
            return True
        # Invariant: a CPU hands the module only pages it owns.
        self._log.record(
            PAMT_PAGES_LOST,
            cpu=cpu,
            range_=range_,
            leaf=tdx.TDH_PHYMEM_PAMT_ADD,
            a=hpa,
            b=LOST_NOT_OWNED,
            c=seen,
        )
        return False

    def module_give(self, cpu: int, hpa: int) -> None:
        """PAMT.REMOVE: the module hands the page to the calling CPU."""
        i = self._index(hpa)
        seen = self._owners.cmpxchg(i, MODULE, cpu + 1)
        # Invariant: the module only gives back pages it holds (an emulator bug otherwise).
        if seen != MODULE:
            raise RuntimeError(f"module gave back page {hpa:#x} it does not own (owner {seen})")

    # -- inspection -----------------------------------------------------------------

    def owners(self) -> list[int]:
        return self._owners.snapshot()

    def owner(self, hpa: int) -> int:
        return self._owners.read(self._index(hpa))

    def check_quiescent(self) -> int:
        """Record every page a CPU still owns with all CPUs idle; returns how many."""
        leaked = 0
        for i, o in enumerate(self._owners.snapshot()):
            # Invariant: at quiescence no CPU holds a PAMT page (it is free or the module's).
            if o > 0:
                leaked += 1
                self._log.record(PAMT_PAGES_LOST, cpu=o - 1, a=self.hpa(i), b=LOST_LEAKED)
        return leaked

    def statistics(self) -> PoolStatistics:
        owners = self._owners.snapshot()
        return PoolStatistics(
            npages=self.npages,
            free=sum(1 for o in owners if o == FREE),
            cpu_owned=sum(1 for o in owners if o > 0),
            module_owned=sum(1 for o in owners if o == MODULE),
            allocs=self._hdr.read(_ALLOCS),
            frees=self._hdr.read(_FREES),
            exhausted=self._hdr.read(_EXHAUSTED),
            strayed=self._hdr.read(_STRAYED),
        )

    def reset(self, counters: bool = True) -> None:
        """Every page free and, with ``counters``, the counters zero (between explore
        executions or stress epochs, every CPU parked)."""
        self._owners.fill(FREE)
        if counters:
            for w in (_ALLOCS, _FREES, _EXHAUSTED, _STRAYED):
                self._hdr.set(w, 0)

    def close(self) -> None:
        self._owners.close()
        self._hdr.close()
        self.segment.close()

    def __enter__(self) -> PamtPagePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
