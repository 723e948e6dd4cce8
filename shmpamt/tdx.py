"""TDX architectural constants the PAMT helpers see: leaves, status codes, sizes.

Values follow the kernel's ``arch/x86/virt/vmx/tdx/tdx.h`` and the TDX module
ABI where those name them (leaves, ``TDX_SUCCESS``, ``TDX_OPERAND_BUSY``,
``TDX_HPA_RANGE_NOT_FREE``, ``TDX_OPERAND_INVALID``). The refusal codes the seed
does not name (REMOVE of an absent PAMT, REMOVE while pages are assigned, AUG
without a PAMT, ...) are this emulator's own picks: distinct classes with the
error bit set, not values taken from the TDX module; see docs/design.md.
"""

from __future__ import annotations

from typing import Final

# SEAMCALL leaf numbers
TDH_MEM_PAGE_AUG: Final = 6
TDH_PHYMEM_PAGE_RECLAIM: Final = 28
TDH_PHYMEM_PAMT_ADD: Final = 58
TDH_PHYMEM_PAMT_REMOVE: Final = 59
# Emulator-private leaves (outside the architectural range) for the rig itself.
SHMPAMT_NOP: Final = 0x7000
SHMPAMT_STATUS: Final = 0x7001
SHMPAMT_RESET: Final = 0x7002

LEAF_NAMES: Final = {
    TDH_MEM_PAGE_AUG: "TDH.MEM.PAGE.AUG",
    TDH_PHYMEM_PAGE_RECLAIM: "TDH.PHYMEM.PAGE.RECLAIM",
    TDH_PHYMEM_PAMT_ADD: "TDH.PHYMEM.PAMT.ADD",
    TDH_PHYMEM_PAMT_REMOVE: "TDH.PHYMEM.PAMT.REMOVE",
    SHMPAMT_NOP: "NOP",
    SHMPAMT_STATUS: "STATUS",
    SHMPAMT_RESET: "RESET",
}

# page-size field in rcx
TDX_PS_4K: Final = 0
TDX_PS_2M: Final = 1
TDX_PS_1G: Final = 2

PAGE_SIZE: Final = 4096
SZ_2M: Final = 2 * 1024 * 1024
PAGES_PER_2M: Final = SZ_2M // PAGE_SIZE
PAMT_PAGES_PER_2M: Final = 2  # 16 bytes x 512 entries = 8 KiB
#: the v6 series' name for it
TDX_DPAMT_ENTRY_PAGE_CNT: Final = PAMT_PAGES_PER_2M

# status words
TDX_ERROR: Final = 1 << 63
TDX_SEAMCALL_STATUS_MASK: Final = 0xFFFFFFFF00000000
TDX_SUCCESS: Final = 0
TDX_OPERAND_INVALID: Final = 0xC000010000000000
TDX_OPERAND_BUSY: Final = 0x8000020000000000
TDX_HPA_RANGE_NOT_FREE: Final = 0xC000030400000000
TDX_SW_ERROR: Final = TDX_ERROR | (0xFF << 40)
# Refusals of the Dynamic PAMT checks (documented choices, kept distinct):
TDX_PAMT_NOT_PRESENT: Final = 0xC000030500000000  # REMOVE of an absent PAMT
TDX_PAGE_IN_USE: Final = 0xC000030600000000  # REMOVE while 4K pages are assigned
TDX_PAMT_MISSING: Final = 0xC000030700000000  # AUG/RECLAIM of a page whose range has no PAMT
TDX_PAGE_NOT_ASSIGNED: Final = 0xC000030800000000  # RECLAIM of a page that is not assigned
TDX_PAGE_ALREADY_ASSIGNED: Final = 0xC000030900000000  # AUG of a page already assigned

STATUS_NAMES: Final = {
    TDX_SUCCESS: "TDX_SUCCESS",
    TDX_OPERAND_INVALID: "TDX_OPERAND_INVALID",
    TDX_OPERAND_BUSY: "TDX_OPERAND_BUSY",
    TDX_HPA_RANGE_NOT_FREE: "TDX_HPA_RANGE_NOT_FREE",
    TDX_SW_ERROR: "TDX_SW_ERROR",
    TDX_PAMT_NOT_PRESENT: "TDX_PAMT_NOT_PRESENT",
    TDX_PAGE_IN_USE: "TDX_PAGE_IN_USE",
    TDX_PAMT_MISSING: "TDX_PAMT_MISSING",
    TDX_PAGE_NOT_ASSIGNED: "TDX_PAGE_NOT_ASSIGNED",
    TDX_PAGE_ALREADY_ASSIGNED: "TDX_PAGE_ALREADY_ASSIGNED",
}

# errno values the helpers return (negated)
EIO: Final = 5
ENOMEM: Final = 12


def status_class(err: int) -> int:
    return err & TDX_SEAMCALL_STATUS_MASK


def is_error(err: int) -> bool:
    return bool(err & TDX_ERROR)


def status_name(err: int) -> str:
    return STATUS_NAMES.get(status_class(err), f"{err:#018x}")


def align_down_2m(hpa: int) -> int:
    return hpa & ~(SZ_2M - 1)


def leaf_name(leaf: int) -> str:
    return LEAF_NAMES.get(leaf, f"leaf {leaf}")
