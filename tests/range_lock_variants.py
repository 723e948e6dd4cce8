"""A variant that serialises PAMT.ADD/REMOVE per 2 MiB range only, not globally.

Each range is used by one CPU in the scenario it is explored in (``--ranges 2
--seed 8``: CPU 0 maps pages of range 0, CPU 1 of range 1, every round), so a
per-range serialisation is all the refcount protocol itself needs there. What it
misses is the module's own locking across ranges: PAMT.ADD of a range walks its
pair pages, and one of them lies in the other range (machine/pool_layout.py), so
an ADD of range 0 holds range 1's 2 MiB entry shared while CPU 1's REMOVE of
range 1 wants it exclusive. Loaded by file into CPU processes.
"""

from __future__ import annotations

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtVariant


class RangeSerialised(PamtVariant):
    """First get of a range ADDs, last put REMOVEs, no pamt_lock: sound only while
    each range has one user at a time and the ranges' SEAMCALLs never meet."""

    name = "range-serialised"
    description = "no pamt_lock: one CPU per range is assumed to need none"
    source = "tests/range_lock_variants.py"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        if k.atomic_inc_return(ref) != 1:
            return 0
        pages = [k.alloc_page(), k.alloc_page()]
        mine = [p for p in pages if p is not None]
        if len(mine) < 2:
            for p in mine:
                k.free_page(p)
            k.atomic_dec(ref)
            return -tdx.ENOMEM
        err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, mine)
        if err:
            for p in mine:
                k.free_page(p)
            k.atomic_dec(ref)
            return -tdx.EIO
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        if not k.atomic_dec_and_test(ref):
            return
        pages: list[int] = []
        if k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pages):
            k.atomic_inc(ref)  # the PAMT stays; the next put tries again
            return
        for p in pages:
            k.free_page(p)
