"""``locked``: every get and put entirely under pamt_lock, the correct baseline.

Not a posting: the simplest protocol that is right by inspection, so the rig
can show it reports nothing on a correct variant (and what the lock-free fast
paths of the others buy). Closest in spirit to the v6 series' "handle
concurrent callers" step, before its optimisation.

Refcount encoding: number of users, 0 = none (PAMT absent), starts at 0. It is
a plain counter: only read and written (``atomic_read``/``atomic_set``) while
pamt_lock is held. ADD on 0->1, REMOVE on 1->0.

Robust under fault injection: TDX_OPERAND_BUSY is retried (up to
``BUSY_RETRIES``), an allocation failure returns -ENOMEM with the refcount
untouched and every page given back. pamt_lock is a sleeping semaphore in this
model, so the PAMT pages are allocated under it and only when needed; the
kernel would have to allocate before taking a spinlock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Final

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.common import tdx_alloc_pamt_pages, tdx_free_pamt_pages, tdx_operand_busy

#: BUSY is transient (another SEAMCALL holds a module lock); give up only when
#: injection makes it effectively permanent, so a run cannot hang.
BUSY_RETRIES: Final = 10_000


def _retry_busy(call: Callable[[], int]) -> int:
    """Reissue a SEAMCALL while the module answers TDX_OPERAND_BUSY."""
    err = call()
    for _ in range(BUSY_RETRIES):
        if not tdx_operand_busy(err):
            break
        err = call()
    return err


class Locked(PamtVariant):
    name: ClassVar[str] = "locked"
    description: ClassVar[str] = "baseline: whole get/put under pamt_lock, plain refcount"
    initial_refcount: ClassVar[int] = 0
    source: ClassVar[str] = "shmpamt baseline (no posting): everything under pamt_lock"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        k.spin_lock()
        users = k.atomic_read(pamt_refcount)
        if users == 0:
            # 0->1: this get installs the PAMT.
            if tdx_alloc_pamt_pages(k, pamt_pages):
                k.spin_unlock()
                return -tdx.ENOMEM
            err = _retry_busy(lambda: k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages))
            if err:
                # Nothing was installed: give the pages back, count unchanged.
                tdx_free_pamt_pages(k, pamt_pages)
                k.spin_unlock()
                k.pr_err(f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}")
                return -tdx.EIO
        k.atomic_set(pamt_refcount, users + 1)
        k.spin_unlock()
        return 0

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)

        k.spin_lock()
        users = k.atomic_read(pamt_refcount)
        # A put without a get is a caller bug; refuse rather than underflow.
        if k.WARN_ON_ONCE(users <= 0, "tdx_pamt_put() on a range with no users"):
            k.spin_unlock()
            return
        if users == 1:
            # 1->0: this put removes the PAMT.
            err = _retry_busy(lambda: k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages))
            if err:
                # The PAMT is still installed: keep it counted.
                k.spin_unlock()
                k.pr_err(f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(err)}")
                return
        k.atomic_set(pamt_refcount, users - 1)
        k.spin_unlock()

        tdx_free_pamt_pages(k, pamt_pages)
