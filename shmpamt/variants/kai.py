"""``kai``: the reviewer's counter-proposal in the seed thread, as written.

Models Kai Huang's reply (May 5 2025) to the RFC tdx_pamt_get()/put() patch:
the code sketched inline in that message, read literally. Its
``atomic_inc(pamt_refcount, 0)`` is taken as ``atomic_inc``; the RFC's
``WARN_ON_ONCE(refcount < 0)`` is dropped because the sketch makes -1 legal.
``tdx_pamt_add`` is the RFC one with the lock, the recheck and the page
freeing moved to the caller, returning >0 (ADD said RANGE_NOT_FREE), 0 (added)
or <0 (error), as the message proposes.

Refcount encoding: -1 = PAMT absent (the initial value); otherwise users - 1
(0 = present with one user). get: ``atomic_inc_unless_negative`` fast path,
else allocate, lock, ADD, increment. put: ``atomic_dec_if_positive(rc) >= 0``
fast path, else lock, return if rc > 0, REMOVE, ``atomic_set(rc, -1)``.

The slow put returns on ``rc > 0`` without dropping its own count, so a get
that slips in between leaves the refcount one too high for ever.
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


class Kai(PamtVariant):
    name: ClassVar[str] = "kai"
    description: ClassVar[str] = (
        "reviewer's sketch: refcount -1 = absent, inc_unless_negative / dec_if_positive"
    )
    initial_refcount: ClassVar[int] = -1
    source: ClassVar[str] = "Kai Huang, Re: [RFC, PATCH 05/12] (May 5 2025), inline sketch"

    def _tdx_pamt_add(self, k: Kernel, hpa: int, pamt_pages: list[int]) -> int:
        """tdx_pamt_add() with pamt_lock held by the caller: >0 present, 0 added, <0 error."""
        hpa = tdx.align_down_2m(hpa)

        err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)
        if not err:
            return 0
        # Another get added it first: the caller's pages are unused.
        if tdx_hpa_range_not_free(err):
            return 1
        k.pr_err(f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}")
        return -tdx.EIO

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = page
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        # Fast path: PAMT present (refcount not -1).
        if k.atomic_inc_unless_negative(pamt_refcount):
            return 0

        if tdx_alloc_pamt_pages(k, pamt_pages):
            return -tdx.ENOMEM

        k.spin_lock()
        ret = self._tdx_pamt_add(k, hpa, pamt_pages)
        if ret >= 0:
            k.atomic_inc(pamt_refcount)
        k.spin_unlock()

        # Lost the race, or failed: our pages were not used.
        if ret:
            tdx_free_pamt_pages(k, pamt_pages)

        return 0 if ret >= 0 else ret

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        # Fast path: we were not the last user.
        if k.atomic_dec_if_positive(pamt_refcount) >= 0:
            return

        k.spin_lock()

        # More than one get meanwhile: leave the PAMT (our count is not dropped).
        if k.atomic_read(pamt_refcount) > 0:
            k.spin_unlock()
            return

        # The sketch ignores REMOVE's status.
        _err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        k.atomic_set(pamt_refcount, -1)
        k.spin_unlock()

        tdx_free_pamt_pages(k, pamt_pages)
