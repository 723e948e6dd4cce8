"""Variants that are ``v6`` step for step but for one slip on an error path.

Each is correct while no SEAMCALL is refused and no allocation fails, so a search
without faults reports them clean; each mishandles one injected fault in a way
only that slip does (tests/test_error_paths.py). Loaded by file into CPU processes.
"""

from __future__ import annotations

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtCache, PamtVariant
from shmpamt.variants.common import (
    TDX_DPAMT_ENTRY_PAGE_CNT,
    hpa_to_pfn,
    tdh_phymem_pamt_add,
    tdh_phymem_pamt_remove,
    tdx_find_pamt_refcount,
)
from shmpamt.variants.v6 import V6, alloc_pamt_array, free_pamt_array


class AddResultIgnored(V6):
    """(a) the slow get sets the refcount to 1 after PAMT.ADD whatever ADD returned."""

    name = "add-result-ignored"

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT
        ref = tdx_find_pamt_refcount(k, pfn)
        if k.atomic_inc_not_zero(ref):
            return 0
        ret = alloc_pamt_array(k, pamt_pages, cache)
        if ret:
            return ret
        k.spin_lock()
        if k.atomic_read(ref):
            k.atomic_inc(ref)
            k.spin_unlock()
            free_pamt_array(k, pamt_pages)
            return 0
        tdh_phymem_pamt_add(k, pfn, pamt_pages)
        k.atomic_set(ref, 1)  # the slip: ADD's status is not looked at
        k.spin_unlock()
        return 0


class RemoveFailureWarnsOnly(V6):
    """(b) a put whose PAMT.REMOVE failed only warns and unlocks: the refcount stays 0
    while the module keeps the PAMT."""

    name = "remove-failure-warns-only"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT
        ref = tdx_find_pamt_refcount(k, pfn)
        if not k.atomic_dec_and_lock(ref):
            return
        status = tdh_phymem_pamt_remove(k, pfn, pamt_pages)
        if k.WARN_ON_ONCE(status != tdx.TDX_SUCCESS, "TDH_PHYMEM_PAMT_REMOVE failed"):
            k.spin_unlock()  # the slip: no atomic_set(ref, 1)
            return
        k.spin_unlock()
        free_pamt_array(k, pamt_pages)


class AddFailureLeaksPages(V6):
    """(c) a get whose PAMT.ADD failed unlocks and returns -EIO before freeing its pages."""

    name = "add-failure-leaks-pages"

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT
        ref = tdx_find_pamt_refcount(k, pfn)
        if k.atomic_inc_not_zero(ref):
            return 0
        ret = alloc_pamt_array(k, pamt_pages, cache)
        if ret:
            return ret
        k.spin_lock()
        if k.atomic_read(ref):
            k.atomic_inc(ref)
            k.spin_unlock()
            free_pamt_array(k, pamt_pages)
            return 0
        if tdh_phymem_pamt_add(k, pfn, pamt_pages) != tdx.TDX_SUCCESS:
            k.spin_unlock()
            return -tdx.EIO  # the slip: the two pages are never freed
        k.atomic_set(ref, 1)
        k.spin_unlock()
        return 0


class SecondPageLeaks(PamtVariant):
    """(probe) ``locked`` without a page cache, whose allocation of a pair keeps the
    first page when the second allocation fails: it is never freed."""

    name = "second-page-leaks"
    initial_refcount = 0

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        pages: list[int] = []
        for _ in range(tdx.PAMT_PAGES_PER_2M):
            p = k.alloc_page()
            if p is None:
                return -tdx.ENOMEM  # the slip: pages[0] is not freed
            pages.append(p)
        k.spin_lock()
        if k.atomic_read(ref):
            k.atomic_inc(ref)
            k.spin_unlock()
            for p in pages:
                k.free_page(p)
            return 0
        err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pages)
        if err:
            k.spin_unlock()
            for p in pages:
                k.free_page(p)
            return -tdx.EIO
        k.atomic_set(ref, 1)
        k.spin_unlock()
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        ref = k.tdx_get_pamt_refcount(hpa)
        k.spin_lock()
        if k.atomic_dec_return(ref):
            k.spin_unlock()
            return
        pages: list[int] = []
        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pages)
        if err:
            k.atomic_set(ref, 1)  # the PAMT is still there
            k.spin_unlock()
            return
        k.spin_unlock()
        for p in pages:
            k.free_page(p)
