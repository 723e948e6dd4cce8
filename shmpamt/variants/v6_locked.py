"""``v6-locked``: v6 without its optimisation, patch 05/11's lock-only helpers.

Source: "[PATCH v6 05/11] x86/virt/tdx: Handle concurrent callers in
tdx_pamt_get/put()" (May 2026), with 08/11's cache API applied as in the
posted series minus 06/11 (the cover letter says the series was also tested
with the optimisation removed; 08/11's hunks touch only the page allocation).

Every refcount read and change happens under pamt_lock (``scoped_guard``): get
always takes a page pair first, then under the lock joins a present PAMT
(``atomic_inc``; the pair goes back to the allocator) or ADDs it and sets 1; any
ADD error is a warning and -EIO. put under the lock: above 1 just
``atomic_dec``; at 1 REMOVE, then ``atomic_set(0)``; on a REMOVE error a
warning and nothing else (the count stays 1, the PAMT stays).

Refcount encoding: number of users, 0 = none (PAMT absent), starts at 0.
"""

from __future__ import annotations

from typing import ClassVar

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtCache
from shmpamt.variants.common import (
    TDX_DPAMT_ENTRY_PAGE_CNT,
    hpa_to_pfn,
    tdh_phymem_pamt_add,
    tdh_phymem_pamt_remove,
    tdx_find_pamt_refcount,
    tdx_supports_dynamic_pamt,
)
from shmpamt.variants.v6 import V6, alloc_pamt_array, free_pamt_array


class V6Locked(V6):
    """The cache helpers (top-up, free) are 08/11's, the same as v6's."""

    name: ClassVar[str] = "v6-locked"
    description: ClassVar[str] = (
        "v6 05/11 alone (+ 08/11's cache): get and put wholly under pamt_lock"
    )
    source: ClassVar[str] = (
        "[PATCH v6 05/11] Handle concurrent callers in tdx_pamt_get/put() (May 2026), "
        "with 08/11's tdx_pamt_cache"
    )

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT

        if not tdx_supports_dynamic_pamt():
            return 0

        ret = alloc_pamt_array(k, pamt_pages, cache)
        if ret:
            return ret

        pamt_refcount = tdx_find_pamt_refcount(k, pfn)

        # scoped_guard(spinlock): every way out of the block unlocks.
        k.spin_lock()
        # Already added (refcount >= 1): take a reference, drop the pair.
        if k.atomic_read(pamt_refcount):
            k.atomic_inc(pamt_refcount)
            k.spin_unlock()
            free_pamt_array(k, pamt_pages)
            return ret

        # Add the pair and take the count from 0 to 1.
        tdx_status = tdh_phymem_pamt_add(k, pfn, pamt_pages)
        if k.WARN_ON_ONCE(
            tdx_status != tdx.TDX_SUCCESS,
            f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(tdx_status)}",
        ):
            k.spin_unlock()
            free_pamt_array(k, pamt_pages)
            return -tdx.EIO

        k.atomic_set(pamt_refcount, 1)
        k.spin_unlock()

        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        pfn = hpa_to_pfn(page)
        pamt_pages = [0] * TDX_DPAMT_ENTRY_PAGE_CNT

        if not tdx_supports_dynamic_pamt():
            return

        pamt_refcount = tdx_find_pamt_refcount(k, pfn)

        # scoped_guard(spinlock): every way out of the block unlocks.
        k.spin_lock()
        # Other references remain: only drop this one.
        if k.atomic_read(pamt_refcount) > 1:
            k.atomic_dec(pamt_refcount)
            k.spin_unlock()
            return

        # Remove the pair and take the count from 1 to 0.
        tdx_status = tdh_phymem_pamt_remove(k, pfn, pamt_pages)

        # On failure the array may hold garbage: keep it, and yell.
        if k.WARN_ON_ONCE(
            tdx_status != tdx.TDX_SUCCESS,
            f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(tdx_status)}",
        ):
            k.spin_unlock()
            return

        k.atomic_set(pamt_refcount, 0)
        k.spin_unlock()

        free_pamt_array(k, pamt_pages)
