"""``v6``: the sixth posting (May 2026) as posted: patches 05/11 + 06/11 + 08/11.

Source: "[PATCH v6 05/11] x86/virt/tdx: Handle concurrent callers in
tdx_pamt_get/put()", "[PATCH v6 06/11] x86/virt/tdx: Optimize
tdx_pamt_get/put()" and "[PATCH v6 08/11] x86/tdx: Add APIs to support Dynamic
PAMT ops from KVM's fault path" (Rick Edgecombe, Kiryl Shutsemau, Sean
Christopherson), on top of the helpers of 03/11 and 04/11.

The API takes a page frame number and a ``struct tdx_pamt_cache``: KVM fills a
per-vCPU cache before taking its MMU lock (``tdx_topup_pamt_cache``), get draws
its page pair from it, and a NULL cache means the page allocator. Pages a get
did not hand to the module (a race lost to another get, an ADD error) go back to
the allocator, not to the cache.

get (06/11): ``atomic_inc_not_zero`` fast path; take the pair; lock; if the
refcount is non-zero ``atomic_inc``, unlock, free the pair; else PAMT.ADD: on
success ``atomic_set(1)``, on any error a warning and -EIO. put: return unless
``atomic_dec_and_lock`` took the count to 0 (lock held); PAMT.REMOVE: on error
a warning, ``atomic_set(1)`` (the PAMT is still there), unlock; else unlock and
free the pair.

Refcount encoding: number of users, 0 = none (PAMT absent), starts at 0.
"""

from __future__ import annotations

from typing import ClassVar

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import CachedPamtVariant, PamtCache
from shmpamt.variants.common import (
    TDX_DPAMT_ENTRY_PAGE_CNT,
    hpa_to_pfn,
    tdh_phymem_pamt_add,
    tdh_phymem_pamt_remove,
    tdx_find_pamt_refcount,
    tdx_supports_dynamic_pamt,
)

# -- the static helpers of 03/11 and 08/11 ---------------------------------------


def tdx_alloc_page_pamt_cache(cache: PamtCache) -> int | None:
    """Take the cache's first page (list_first_entry_or_null + list_del), or None."""
    if not cache.page_list:
        return None
    page = cache.page_list.pop(0)
    cache.cnt -= 1
    return page


def alloc_dpamt_page(k: Kernel, cache: PamtCache | None) -> int | None:
    """A PAMT page from ``cache``, or from the page allocator when there is none."""
    if cache is not None:
        return tdx_alloc_page_pamt_cache(cache)
    return k.alloc_page()


def alloc_pamt_array(k: Kernel, pamt_pages: list[int], cache: PamtCache | None) -> int:
    """Fill the page array; on a miss the pages taken so far go to the allocator."""
    for i in range(TDX_DPAMT_ENTRY_PAGE_CNT):
        page = alloc_dpamt_page(k, cache)
        if page is None:
            for j in range(i):
                k.free_page(pamt_pages[j])
            return -tdx.ENOMEM
        pamt_pages[i] = page
    return 0


def free_pamt_array(k: Kernel, pamt_pages: list[int]) -> None:
    """Reset and free every page of the array, to the allocator (never the cache)."""
    for i in range(TDX_DPAMT_ENTRY_PAGE_CNT):
        # Reset unconditionally: the module may have written them.
        k.tdx_quirk_reset_paddr(pamt_pages[i], tdx.PAGE_SIZE)
        k.free_page(pamt_pages[i])


class V6(CachedPamtVariant):
    name: ClassVar[str] = "v6"
    description: ClassVar[str] = (
        "v6 as posted (May 2026, 05+06+08/11): pfn + PAMT page cache, atomic_dec_and_lock put"
    )
    initial_refcount: ClassVar[int] = 0
    source: ClassVar[str] = (
        "[PATCH v6 05/11, 06/11, 08/11] Dynamic PAMT (May 2026): tdx_pamt_get(pfn, cache), "
        "tdx_pamt_put(pfn), tdx_topup_pamt_cache(), tdx_free_pamt_cache()"
    )

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT

        if not tdx_supports_dynamic_pamt():
            return 0

        pamt_refcount = tdx_find_pamt_refcount(k, pfn)

        # Already backed (refcount >= 1): just take a reference.
        if k.atomic_inc_not_zero(pamt_refcount):
            return 0

        ret = alloc_pamt_array(k, pamt_pages, cache)
        if ret:
            return ret

        k.spin_lock()

        # No combined primitive for 0->1: another get may have done it since
        # both fast paths failed, so look again under the lock.
        if k.atomic_read(pamt_refcount):
            k.atomic_inc(pamt_refcount)
            k.spin_unlock()
            free_pamt_array(k, pamt_pages)
            return 0

        tdx_status = tdh_phymem_pamt_add(k, pfn, pamt_pages)
        if tdx_status == tdx.TDX_SUCCESS:
            # Only this locked path takes the count from 0 to 1.
            k.atomic_set(pamt_refcount, 1)
        else:
            k.WARN_ON_ONCE(True, f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(tdx_status)}")
            k.spin_unlock()
            free_pamt_array(k, pamt_pages)
            return -tdx.EIO

        k.spin_unlock()
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT

        if not tdx_supports_dynamic_pamt():
            return

        pamt_refcount = tdx_find_pamt_refcount(k, pfn)

        # Not the last reference: the decrement is all there is to do.
        if not k.atomic_dec_and_lock(pamt_refcount):
            return

        tdx_status = tdh_phymem_pamt_remove(k, pfn, pamt_pages)

        # On failure the array may hold garbage: keep it, and yell.
        if k.WARN_ON_ONCE(
            tdx_status != tdx.TDX_SUCCESS,
            f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(tdx_status)}",
        ):
            # The count reached 0 but the PAMT is still installed.
            k.atomic_set(pamt_refcount, 1)
            k.spin_unlock()
            return

        k.spin_unlock()

        free_pamt_array(k, pamt_pages)

    def tdx_free_pamt_cache(self, k: Kernel, cache: PamtCache) -> None:
        while (page := tdx_alloc_page_pamt_cache(cache)) is not None:
            k.free_page(page)

    def tdx_topup_pamt_cache(self, k: Kernel, cache: PamtCache, npages: int) -> int:
        if k.WARN_ON_ONCE(not tdx_supports_dynamic_pamt(), "no Dynamic PAMT"):
            return 0

        npages *= TDX_DPAMT_ENTRY_PAGE_CNT

        while cache.cnt < npages:
            page = k.alloc_page()
            if page is None:
                return -tdx.ENOMEM
            # list_add(): at the head.
            cache.page_list.insert(0, page)
            cache.cnt += 1

        return 0
