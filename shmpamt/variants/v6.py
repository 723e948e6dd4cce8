"""``v6``: the sixth posting's optimised helpers (May 2026).

Models tdx_pamt_get()/tdx_pamt_put() of the v6 Dynamic PAMT series as
docs/semantics.md section 3 describes them: get is v4's without
the RANGE_NOT_FREE special case (any ADD failure warns and returns -EIO); put
takes the 1->0 step with ``atomic_dec_and_lock``, so the last decrement and
REMOVE happen under one hold of pamt_lock.

Refcount encoding: number of users, 0 = none (PAMT absent), starts at 0.

Because 1->0 only happens under the lock, a slow get that finds 0 under the
lock knows the PAMT is absent; no race is expected without faults. A failing
REMOVE (e.g. injected BUSY) resets the refcount to 1 with the PAMT kept, which
leaves a present PAMT with a count nobody holds.
"""

from __future__ import annotations

from typing import ClassVar

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.common import tdx_alloc_pamt_pages, tdx_free_pamt_pages


class V6(PamtVariant):
    name: ClassVar[str] = "v6"
    description: ClassVar[str] = "v6 (May 2026): put uses atomic_dec_and_lock, ADD failure = -EIO"
    initial_refcount: ClassVar[int] = 0
    source: ClassVar[str] = "Dynamic PAMT series v6 (May 2026), tdx_pamt_get()/tdx_pamt_put()"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        # Fast path: already backed and in use.
        if k.atomic_inc_not_zero(pamt_refcount):
            return 0

        if tdx_alloc_pamt_pages(k, pamt_pages):
            return -tdx.ENOMEM

        ret = 0
        k.spin_lock()
        if k.atomic_read(pamt_refcount):
            # Installed by someone else while we allocated.
            k.atomic_inc(pamt_refcount)
        else:
            err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)
            if k.WARN_ON_ONCE(err != 0, f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}"):
                ret = -tdx.EIO
            else:
                k.atomic_set(pamt_refcount, 1)
                # The module owns the pages now.
                pamt_pages.clear()
        k.spin_unlock()

        tdx_free_pamt_pages(k, pamt_pages)
        return ret

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        # Returns holding pamt_lock only when this put took the refcount to 0.
        if not k.atomic_dec_and_lock(pamt_refcount):
            return

        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        if err:
            # Keep the PAMT and mark the range used again.
            k.atomic_set(pamt_refcount, 1)
            k.pr_err(f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(err)}")
            k.spin_unlock()
            return
        k.spin_unlock()

        tdx_free_pamt_pages(k, pamt_pages)
