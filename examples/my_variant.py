"""An example user variant: lock-free fast paths, the 0<->1 steps under pamt_lock.

Run it with:

    shmpamt stress --variant examples/my_variant.py:MyVariant

Refcount encoding: number of users of the 2 MiB range, 0 = none (PAMT absent).
The last decrement is taken with atomic_dec_and_lock, so a refcount of 0 seen
under pamt_lock always means "PAMT absent": no RANGE_NOT_FREE special case.
"""

from __future__ import annotations

from typing import ClassVar

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants import PamtVariant, tdx_alloc_pamt_pages, tdx_free_pamt_pages


def _busy(err: int) -> bool:
    return tdx.status_class(err) == tdx.TDX_OPERAND_BUSY


class MyVariant(PamtVariant):
    name: ClassVar[str] = "my-variant"
    description: ClassVar[str] = "example: inc_not_zero get, dec_and_lock put, BUSY retried"
    initial_refcount: ClassVar[int] = 0
    source: ClassVar[str] = "examples/my_variant.py"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = tdx.align_down_2m(page)
        refcount = k.tdx_get_pamt_refcount(hpa)

        # Fast path: somebody already keeps the PAMT present.
        if k.atomic_inc_not_zero(refcount):
            return 0

        pamt_pages: list[int] = []
        if tdx_alloc_pamt_pages(k, pamt_pages):
            return -tdx.ENOMEM

        k.spin_lock()
        if k.atomic_read(refcount) == 0:
            err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)
            while _busy(err):
                err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)
            if err:
                k.spin_unlock()
                tdx_free_pamt_pages(k, pamt_pages)
                k.pr_err(f"PAMT.ADD failed: {tdx.status_name(err)}")
                return -tdx.EIO
            pamt_pages.clear()  # the module owns them now
        k.atomic_inc(refcount)
        k.spin_unlock()

        # Lost the race to another get: our pages were not needed.
        tdx_free_pamt_pages(k, pamt_pages)
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        refcount = k.tdx_get_pamt_refcount(hpa)

        # True (and holding pamt_lock) only for the 1->0 step.
        if not k.atomic_dec_and_lock(refcount):
            return

        pamt_pages: list[int] = []
        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        while _busy(err):
            err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        if err:
            # PAMT still installed: count it as used so nobody re-ADDs it.
            k.atomic_set(refcount, 1)
            k.spin_unlock()
            k.pr_err(f"PAMT.REMOVE failed: {tdx.status_name(err)}")
            return
        k.spin_unlock()
        tdx_free_pamt_pages(k, pamt_pages)
