"""Deliberately broken copies of ``rfc``, one slip each, to prove the rig finds slips.

Each mutant subclasses :class:`~shmpamt.variants.rfc.Rfc` and overrides only
the method that holds its slip; the overriding method is rfc's with exactly one
change, marked ``SLIP``. Refcount encoding is rfc's (users, starts at 0).
"""

from __future__ import annotations

from typing import ClassVar

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.common import tdx_free_pamt_pages, tdx_hpa_range_not_free
from shmpamt.variants.rfc import Rfc


class RfcNoRecheck(Rfc):
    """put issues REMOVE without re-reading the refcount under pamt_lock.

    A get that re-took the range between the put's decrement and its lock
    (via ``TDX_HPA_RANGE_NOT_FREE``) has its PAMT removed under it.
    """

    name: ClassVar[str] = "rfc-norecheck"
    description: ClassVar[str] = "rfc mutant: put does not re-read the refcount under the lock"
    source: ClassVar[str] = "rfc with the recheck in tdx_pamt_put() deleted"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        hpa = tdx.align_down_2m(page)
        pamt_pages: list[int] = []

        pamt_refcount = k.tdx_get_pamt_refcount(hpa)
        if not k.atomic_dec_and_test(pamt_refcount):
            return

        k.spin_lock()

        # SLIP: no atomic_read() recheck here; a racing get goes unnoticed.

        err = k.tdh_phymem_pamt_remove(hpa | tdx.TDX_PS_2M, pamt_pages)
        k.spin_unlock()

        if err:
            k.pr_err(f"TDH_PHYMEM_PAMT_REMOVE failed: {tdx.status_name(err)}")
            return

        tdx_free_pamt_pages(k, pamt_pages)


class RfcEarlyPublish(Rfc):
    """get publishes ``refcount = 1`` before PAMT.ADD has been issued.

    A fast-path get on another CPU sees 1, succeeds, and uses the range while
    its PAMT is still absent. On an ADD error the 1 stays published (the line
    moved, nothing else changed).
    """

    name: ClassVar[str] = "rfc-early-publish"
    description: ClassVar[str] = "rfc mutant: get sets the refcount to 1 before PAMT.ADD"
    source: ClassVar[str] = "rfc with atomic_set(rc, 1) moved above tdh_phymem_pamt_add()"

    def _tdx_pamt_add(self, k: Kernel, pamt_refcount: int, hpa: int, pamt_pages: list[int]) -> int:
        hpa = tdx.align_down_2m(hpa)

        k.spin_lock()

        if k.atomic_read(pamt_refcount) != 0:
            k.atomic_inc(pamt_refcount)
            k.spin_unlock()
            tdx_free_pamt_pages(k, pamt_pages)
            return 0

        # SLIP: published before the PAMT exists.
        k.atomic_set(pamt_refcount, 1)

        err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)

        if err:
            tdx_free_pamt_pages(k, pamt_pages)

        if err and not tdx_hpa_range_not_free(err):
            k.spin_unlock()
            k.pr_err(f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}")
            return -tdx.EIO

        k.spin_unlock()
        return 0


class RfcLeakOnLostRace(Rfc):
    """get keeps its freshly allocated pages when another CPU won the race."""

    name: ClassVar[str] = "rfc-leak-on-lost-race"
    description: ClassVar[str] = "rfc mutant: get does not free its pages after losing the race"
    source: ClassVar[str] = "rfc with tdx_free_pamt_pages() dropped from the lost-race branch"

    def _tdx_pamt_add(self, k: Kernel, pamt_refcount: int, hpa: int, pamt_pages: list[int]) -> int:
        hpa = tdx.align_down_2m(hpa)

        k.spin_lock()

        if k.atomic_read(pamt_refcount) != 0:
            k.atomic_inc(pamt_refcount)
            k.spin_unlock()
            # SLIP: the unused pages are never freed.
            return 0

        err = k.tdh_phymem_pamt_add(hpa | tdx.TDX_PS_2M, pamt_pages)

        if err:
            tdx_free_pamt_pages(k, pamt_pages)

        if err and not tdx_hpa_range_not_free(err):
            k.spin_unlock()
            k.pr_err(f"TDH_PHYMEM_PAMT_ADD failed: {tdx.status_name(err)}")
            return -tdx.EIO

        k.atomic_set(pamt_refcount, 1)
        k.spin_unlock()
        return 0
