"""``rfc``: the tdx_pamt_get()/put() helpers as posted in the RFC (May 2025).

Models "[RFC, PATCH 05/12] KVM: TDX: Add tdx_pamt_get()/put() helpers"
(Kirill A. Shutemov), the patch quoted in the seed thread.

Refcount encoding: number of users of the range; 0 = no user (PAMT normally
absent), starts at 0. get: ``atomic_inc_not_zero`` fast path, otherwise allocate
the page pair and go through ``tdx_pamt_add`` under pamt_lock (recheck, ADD,
``TDX_HPA_RANGE_NOT_FREE`` counted as a race won against a put,
``atomic_set(rc, 1)``). put: ``atomic_dec_and_test`` fast path, then under the
lock recheck for 0 and REMOVE.

The 1->0 decrement happens outside the lock, and the slow get publishes with
``atomic_set(rc, 1)`` rather than an increment, so two puts can each see their
own 1->0 for one PAMT and both issue REMOVE.
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


class Rfc(PamtVariant):
    name: ClassVar[str] = "rfc"
    description: ClassVar[str] = (
        "RFC patch as posted: inc_not_zero / dec_and_test fast paths, lock + recheck"
    )
    initial_refcount: ClassVar[int] = 0
    source: ClassVar[str] = (
        "[RFC, PATCH 05/12] KVM: TDX: Add tdx_pamt_get()/put() helpers (May 2025)"
    )

    def _tdx_pamt_add(self, k: Kernel, pamt_refcount: int, hpa: int, pamt_pages: list[int]) -> int:
        """tdx_pamt_add(): the locked 0->1 transition of the slow get."""
        hpa = tdx.align_down_2m(hpa)

        k.spin_lock()

        # Another get took the range while we allocated: join it.
        if k.atomic_read(pamt_refcount) != 0:
            k.atomic_inc(pamt_refcount)
            k.spin_unlock()
            tdx_free_pamt_pages(k, pamt_pages)
            return 0

        err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)

        # The module kept none of our pages on failure (still under the lock).
        if err:
            tdx_free_pamt_pages(k, pamt_pages)

        # RANGE_NOT_FREE: a put dropped to 0 but has not removed yet; we won.
        if err and not tdx_hpa_range_not_free(err):
            k.spin_unlock()
            k.pr_err(f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}")
            return -tdx.EIO

        k.atomic_set(pamt_refcount, 1)
        k.spin_unlock()
        return 0

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = page
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)
        k.WARN_ON_ONCE(k.atomic_read(pamt_refcount) < 0, "negative PAMT refcount")

        # Fast path: the range already has users.
        if k.atomic_inc_not_zero(pamt_refcount):
            return 0

        if tdx_alloc_pamt_pages(k, pamt_pages):
            return -tdx.ENOMEM

        return self._tdx_pamt_add(k, pamt_refcount, hpa, pamt_pages)

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)
        # Fast path: other users remain.
        if not k.atomic_dec_and_test(pamt_refcount):
            return

        k.spin_lock()

        # A get re-took the range between our decrement and the lock.
        if k.atomic_read(pamt_refcount) != 0:
            k.spin_unlock()
            return

        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        k.spin_unlock()

        if err:
            k.pr_err(f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(err)}")
            return

        tdx_free_pamt_pages(k, pamt_pages)
