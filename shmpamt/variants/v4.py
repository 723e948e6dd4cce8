"""``v4``: the optimised helpers of the series' fourth posting (Nov 2025).

Models tdx_pamt_get()/tdx_pamt_put() of "[PATCH v4 07/16] x86/virt/tdx: Add
tdx_alloc/free_page() helpers" plus the v4 fast-path optimisation, as
docs/semantics.md section 3 pins them down. The locked part of the
source is a ``scoped_guard(spinlock)`` whose exits jump to a common "free the
page array" label, so here every early return unlocks first and frees after.

Refcount encoding: number of users, 0 = none, starts at 0. get:
``atomic_inc_not_zero`` fast path; allocate; lock; join if the refcount is
non-zero, else ADD (success or RANGE_NOT_FREE both publish 1). put:
``atomic_dec_and_test`` fast path (outside the lock); lock; bail if non-zero;
REMOVE, and on failure ``atomic_inc`` to undo the decrement.

As in rfc, the 1->0 decrement is outside the lock and the slow get publishes
with ``atomic_set(rc, 1)``: two puts can both REMOVE one PAMT; the second's
failure then re-increments a refcount nobody holds.
"""

from __future__ import annotations

from typing import ClassVar

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.common import (
    tdx_alloc_pamt_pages,
    tdx_free_pamt_pages,
    tdx_hpa_range_not_free,
)


class V4(PamtVariant):
    name: ClassVar[str] = "v4"
    description: ClassVar[str] = (
        "v4 (Nov 2025): dec_and_test outside the lock, REMOVE failure re-increments"
    )
    initial_refcount: ClassVar[int] = 0
    source: ClassVar[str] = "[PATCH v4 07/16] x86/virt/tdx: Add tdx_alloc/free_page() helpers"

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
            # Someone installed it while we allocated: just count ourselves.
            k.atomic_inc(pamt_refcount)
        else:
            # 0->1: install the page pair.
            err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)
            if not err:
                k.atomic_set(pamt_refcount, 1)
                # The module owns the pages now; nothing to free.
                pamt_pages.clear()
            elif tdx_hpa_range_not_free(err):
                # Still present from a put that has not removed yet.
                k.atomic_set(pamt_refcount, 1)
            else:
                k.pr_err(f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}")
                ret = -tdx.EIO
        k.spin_unlock()

        # Leaving the guarded scope: free whatever the module did not take.
        tdx_free_pamt_pages(k, pamt_pages)
        return ret

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        # Fast path: not the last user.
        if not k.atomic_dec_and_test(pamt_refcount):
            return

        k.spin_lock()
        # Re-taken by a get since our decrement.
        if k.atomic_read(pamt_refcount):
            k.spin_unlock()
            return

        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        if err:
            # Undo our decrement; the pages stay with the module.
            k.atomic_inc(pamt_refcount)
            k.pr_err(f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(err)}")
            k.spin_unlock()
            return
        k.spin_unlock()

        tdx_free_pamt_pages(k, pamt_pages)
