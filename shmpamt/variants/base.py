"""The interface every get/put protocol implements, built-in or the user's own."""

from __future__ import annotations

from typing import ClassVar

from shmpamt.machine.kernel import Kernel


class PamtVariant:
    """A ``tdx_pamt_get``/``tdx_pamt_put`` pair written against :class:`Kernel`.

    Subclass it, set ``name``/``description``/``initial_refcount``, and write
    the two methods step for step like the kernel code they model. Instances
    hold no state: everything shared lives behind ``k``.
    """

    #: short name used by ``--variant`` and in reports
    name: ClassVar[str] = ""
    #: one line for ``shmpamt variants``
    description: ClassVar[str] = ""
    #: value of every refcount while nobody uses its range
    initial_refcount: ClassVar[int] = 0
    #: where the modelled code comes from (for docs and reports)
    source: ClassVar[str] = ""

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        """Make the range of ``page`` safe to use; 0 or a negative errno."""
        raise NotImplementedError

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        """Drop the claim a successful get took."""
        raise NotImplementedError


class PamtCache:
    """One CPU's ``struct tdx_pamt_cache`` (v6 08/11): PAMT pages allocated ahead.

    KVM fills it before taking the MMU lock, so a get under that lock needs no
    allocation. ``page_list`` holds physical addresses, head first (``list_add``
    inserts at 0, ``list_first_entry`` reads 0); ``cnt`` is its length, kept by
    hand as the kernel's struct does.
    """

    def __init__(self) -> None:
        self.page_list: list[int] = []
        self.cnt = 0


class CachedPamtVariant(PamtVariant):
    """A variant whose get takes a :class:`PamtCache`, as v6's ``tdx_pamt_get(pfn, cache)``.

    The caller (the workload, as KVM's fault path) keeps one cache per CPU, tops
    it up before every round with :meth:`tdx_topup_pamt_cache` and frees it with
    :meth:`tdx_free_pamt_cache` when the CPU stops. ``cache=None`` means "use the
    page allocator", as the series' NULL cache does.
    """

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        """Make the range of ``page`` safe to use, PAMT pages from ``cache``; 0 or -errno."""
        raise NotImplementedError

    def new_pamt_cache(self) -> PamtCache:
        """``tdx_init_pamt_cache``: an empty cache."""
        return PamtCache()

    def tdx_topup_pamt_cache(self, k: Kernel, cache: PamtCache, npages: int) -> int:
        """Fill ``cache`` for ``npages`` gets; 0 or -ENOMEM (what it got stays cached)."""
        raise NotImplementedError

    def tdx_free_pamt_cache(self, k: Kernel, cache: PamtCache) -> None:
        """Give every cached page back to the allocator."""
        raise NotImplementedError
