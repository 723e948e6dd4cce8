"""PAMT page-list helpers shared by every variant, as the seed patch has them.

The kernel passes the two PAMT pages around as a ``list_head``; here it is a
Python list of physical addresses that the helpers fill and empty in place, so
a caller can tell "pages still mine" (non-empty) from "handed to the module or
freed" (empty) exactly as the kernel code can.
"""

from __future__ import annotations

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
