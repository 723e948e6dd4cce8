"""Where the PAMT page pool's pages live in physical memory.

The kernel's page allocator hands out ordinary memory, so a PAMT page pair comes
from some 2 MiB range that the TDX module itself tracks: maybe the range being
added, maybe another one, with or without a PAMT of its own. PAMT.ADD walks a
pair page that lies in another range with a shared lock on its entries, which is
how two ranges meet in the module (docs/semantics.md, section 2).

So pool pages live inside the guest ranges, in the 4 KiB slots above the ones the
CPUs AUG (a range's slots ``0 .. pages_per_range - 1`` are guest pages, slot 511
downwards are pool pages): the allocator never hands out a page a CPU maps, as a
kernel never hands out a page assigned to a TD. Pool page ``i`` is the ``k``-th
page of partition ``c`` (``i = k * stride + c``, see ``PamtPagePool.alloc``); the
``k``-th pages go round the ranges (range ``k % ranges``), so a CPU's two
consecutive allocations lie in two ranges when there are two. Pages that do not
fit (a range's spare slots exhausted) live at ``POOL_BASE``, above all guest
memory, in ranges the module never adds a PAMT to. The mapping is a pure function
of the index, so an explore replay allocates the same addresses, and the C
runtime (csrc/runtime.c ``shmpamt_pool_index``) computes the same inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shmpamt import tdx

# Physical address layout of the emulated machine: guest memory starts at 0; pool
# pages that do not fit into a guest range's spare slots live far above it.
GUEST_BASE: Final = 0
POOL_BASE: Final = 1 << 40


@dataclass(frozen=True)
class PoolLayout:
    """The address of every pool page and back; ``ranges`` 0 puts them all at POOL_BASE."""

    npages: int
    stride: int = 1
    ranges: int = 0
    #: pool pages per range: the top ``rows`` 4 KiB slots of each range
    rows: int = 0

    @classmethod
    def in_ranges(cls, npages: int, stride: int, ranges: int, pages_per_range: int) -> PoolLayout:
        """The layout of a system whose CPUs AUG slots ``0 .. pages_per_range - 1``."""
        return cls(npages, stride, ranges, max(0, tdx.PAGES_PER_2M - pages_per_range))

    def _row(self, i: int) -> tuple[int, int]:
        k, c = divmod(i, self.stride)
        m, r = divmod(k, self.ranges)
        return r, m * self.stride + c

    def hpa(self, i: int) -> int:
        """Physical address of pool page ``i`` (0 <= i < npages)."""
        if self.ranges:
            r, row = self._row(i)
            if row < self.rows:
                slot = tdx.PAGES_PER_2M - 1 - row
                return GUEST_BASE + r * tdx.SZ_2M + slot * tdx.PAGE_SIZE
        return POOL_BASE + i * tdx.PAGE_SIZE

    def index(self, hpa: int) -> int | None:
        """Pool index of ``hpa``, or None if it is no pool page."""
        if hpa % tdx.PAGE_SIZE:
            return None
        if hpa >= POOL_BASE:
            i = (hpa - POOL_BASE) // tdx.PAGE_SIZE
            if i >= self.npages or (self.ranges and self._row(i)[1] < self.rows):
                return None  # beyond the pool, or a page that lives in a guest range
            return i
        off = hpa - GUEST_BASE
        if off < 0 or not self.ranges:
            return None
        r, within = divmod(off, tdx.SZ_2M)
        row = tdx.PAGES_PER_2M - 1 - within // tdx.PAGE_SIZE
        if r >= self.ranges or row >= self.rows:
            return None
        m, c = divmod(row, self.stride)
        i = (m * self.ranges + r) * self.stride + c
        return i if i < self.npages else None
