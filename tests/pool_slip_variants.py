"""Variants whose slips move PAMT pages between CPUs and the module wrongly.

They probe the one place where DPOR's footprints reason about verdicts rather
than states: PAMT.ADD/REMOVE against another CPU's ``__free_page`` of the same
page (see ``shmpamt/explorer/footprint.py``). Loaded by file into CPU processes.
"""

from __future__ import annotations

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtCache
from shmpamt.variants.v6 import V6, alloc_dpamt_page


class FreesAddedPages(V6):
    """v6, but get frees its PAMT pages even after the module took them: a free of a
    page the module owns, which a later REMOVE by any CPU hands back."""

    name = "frees-added-pages"

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        if k.atomic_inc_not_zero(ref):
            return 0
        pages = [alloc_dpamt_page(k, cache), alloc_dpamt_page(k, cache)]
        if None in pages:
            return -tdx.ENOMEM
        mine = [p for p in pages if p is not None]
        k.spin_lock()
        if k.atomic_read(ref):
            k.atomic_inc(ref)
        elif k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, list(mine)) == 0:
            k.atomic_set(ref, 1)
        k.spin_unlock()
        for p in mine:  # the slip: these may be the module's now
            k.free_page(p)
        return 0


class FreesRemovedPagesTwice(V6):
    """v6, but put frees the pages REMOVE handed back twice: the second free finds the
    page free, or already another CPU's again."""

    name = "frees-removed-pages-twice"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        if not k.atomic_dec_and_lock(ref):
            return
        pages: list[int] = []
        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pages)
        if err:
            k.atomic_set(ref, 1)
        k.spin_unlock()
        for p in pages + pages:  # the slip
            k.free_page(p)
