"""PAMT page-list helpers shared by every variant, as the seed patch has them.

The kernel passes the two PAMT pages around as a ``list_head``; here it is a
Python list of physical addresses that the helpers fill and empty in place, so
a caller can tell "pages still mine" (non-empty) from "handed to the module or
freed" (empty) exactly as the kernel code can.
"""

from __future__ import annotations

from typing import Final

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel


def tdx_free_pamt_pages(k: Kernel, pamt_pages: list[int]) -> None:
    """Give every page on the list back to the allocator and leave the list empty."""
    while pamt_pages:
        # list_del() then __free_page(): the list never names a freed page.
        k.free_page(pamt_pages.pop(0))


def tdx_alloc_pamt_pages(k: Kernel, pamt_pages: list[int]) -> int:
    """Fill ``pamt_pages`` with one range's PAMT pages; 0, or -ENOMEM with nothing kept."""
    for _ in range(tdx.PAMT_PAGES_PER_2M):
        page = k.alloc_page()
        if page is None:
            # alloc_page() returned NULL: undo the partial list.
            tdx_free_pamt_pages(k, pamt_pages)
            return -tdx.ENOMEM
        pamt_pages.append(page)
    return 0


def tdx_hpa_range_not_free(err: int) -> bool:
    """PAMT.ADD found the range's PAMT already present."""
    return tdx.status_class(err) == tdx.TDX_HPA_RANGE_NOT_FREE


def tdx_operand_busy(err: int) -> bool:
    """The module held an internal lock on an operand; the call may be retried."""
    return tdx.status_class(err) == tdx.TDX_OPERAND_BUSY


# -- v6's pfn-based helpers (patches 03/11, 04/11 of the v6 series) -------------

#: PAMT pages the module takes per 2 MiB range (the series' TDX_DPAMT_ENTRY_PAGE_CNT)
TDX_DPAMT_ENTRY_PAGE_CNT: Final = tdx.TDX_DPAMT_ENTRY_PAGE_CNT
#: bits from a page frame number to its 2 MiB range (PMD_SHIFT - PAGE_SHIFT)
_PFN_TO_RANGE_SHIFT: Final = 9
_PAGE_SHIFT: Final = 12


def hpa_to_pfn(hpa: int) -> int:
    """The frame number KVM hands v6's helpers (its ``kvm_pfn_t``)."""
    return hpa >> _PAGE_SHIFT


def tdx_supports_dynamic_pamt() -> bool:
    """The emulated module always has Dynamic PAMT (``&tdx_sysinfo`` says so)."""
    return True


def tdx_find_pamt_refcount(k: Kernel, pfn: int) -> int:
    """The refcount of the 2 MiB range holding frame ``pfn`` (pfn >> 9)."""
    return k.tdx_get_pamt_refcount((pfn >> _PFN_TO_RANGE_SHIFT) * tdx.SZ_2M)


def pamt_2mb_arg(pfn: int) -> int:
    """rcx of PAMT.ADD/REMOVE for the range of ``pfn``: its 2 MiB base | TDX_PS_2M."""
    return tdx.align_down_2m(pfn << _PAGE_SHIFT) | tdx.TDX_PS_2M


def tdh_phymem_pamt_add(k: Kernel, pfn: int, pamt_pages: list[int]) -> int:
    """PAMT.ADD of ``pfn``'s range with the page array ``pamt_pages`` (rdx, r8)."""
    return k.tdh_phymem_pamt_add(pamt_2mb_arg(pfn), pamt_pages)


def tdh_phymem_pamt_remove(k: Kernel, pfn: int, pamt_pages: list[int]) -> int:
    """PAMT.REMOVE; on success the module's two pages (rdx, r8) are copied into the array."""
    got: list[int] = []
    err = k.tdh_phymem_pamt_remove(pamt_2mb_arg(pfn), got)
    if err:
        return err
    # Copy the pages out of the reply, as the ABI hands them back.
    pamt_pages[:] = got
    return tdx.TDX_SUCCESS
