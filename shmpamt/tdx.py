"""TDX architectural constants the PAMT helpers see: leaves, status codes, sizes.

Leaves follow the kernel's ``arch/x86/virt/vmx/tdx/tdx.h``; every status code is
the TDX module's own name and value (intel/tdx-module,
``include/auto_gen_2_0/tdx_error_codes_defs.h``), the ones its Dynamic PAMT
handlers answer with (docs/semantics.md, "The TDX module").
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
TDX_OPERAND_ADDR_RANGE_ERROR: Final = 0xC000010100000000
TDX_OPERAND_BUSY: Final = 0x8000020000000000
TDX_PAGE_METADATA_INCORRECT: Final = 0xC000030000000000
TDX_PAGE_NOT_FREE: Final = 0xC000030300000000
TDX_HPA_RANGE_NOT_FREE: Final = 0xC000030400000000
TDX_NO_PAMT_PAGE_PAIR: Final = 0xC000030500000000
TDX_PAMT_PAGE_NOT_EMPTY: Final = 0xC000030600000000
TDX_MISSING_PAMT_PAGE_PAIR: Final = 0x8000030800000000
TDX_SW_ERROR: Final = TDX_ERROR | (0xFF << 40)
#: not a module status: what a SEAMCALL's begin step answers when the call took every
#: lock its handler takes (its end step then answers the real status); no error bit
SHMPAMT_LOCKS_HELD: Final = 0x00000FFF00000000

STATUS_NAMES: Final = {
    TDX_SUCCESS: "TDX_SUCCESS",
    TDX_OPERAND_INVALID: "TDX_OPERAND_INVALID",
    TDX_OPERAND_ADDR_RANGE_ERROR: "TDX_OPERAND_ADDR_RANGE_ERROR",
    TDX_OPERAND_BUSY: "TDX_OPERAND_BUSY",
    TDX_PAGE_METADATA_INCORRECT: "TDX_PAGE_METADATA_INCORRECT",
    TDX_PAGE_NOT_FREE: "TDX_PAGE_NOT_FREE",
    TDX_HPA_RANGE_NOT_FREE: "TDX_HPA_RANGE_NOT_FREE",
    TDX_NO_PAMT_PAGE_PAIR: "TDX_NO_PAMT_PAGE_PAIR",
    TDX_PAMT_PAGE_NOT_EMPTY: "TDX_PAMT_PAGE_NOT_EMPTY",
    TDX_MISSING_PAMT_PAGE_PAIR: "TDX_MISSING_PAMT_PAGE_PAIR",
    TDX_SW_ERROR: "TDX_SW_ERROR",
    SHMPAMT_LOCKS_HELD: "locks held",
}

# Operand ids the module puts in a status's low 32 bits (which operand it refused).
OPERAND_ID_RCX: Final = 1
OPERAND_ID_RDX: Final = 2
OPERAND_ID_R8: Final = 8
_DETAIL_MASK: Final = 0xFFFFFFFF

# errno values the helpers return (negated)
EIO: Final = 5
ENOMEM: Final = 12


def status_class(err: int) -> int:
    return err & TDX_SEAMCALL_STATUS_MASK


def is_error(err: int) -> bool:
    return bool(err & TDX_ERROR)


def status_name(err: int) -> str:
    return STATUS_NAMES.get(status_class(err), f"{err:#018x}")


def busy_cause(err: int) -> str:
    """Why a status is TDX_OPERAND_BUSY: "contention" (the module's own answer names the
    operand whose PAMT entry another call holds), "injected" (a fault plan or the
    search chose it: the bare class, no operand), or "" for any other status."""
    if status_class(err) != TDX_OPERAND_BUSY:
        return ""
    return "contention" if err & _DETAIL_MASK else "injected"


def describe_status(err: int) -> str:
    """The status's name, with the cause of a BUSY: what reports print."""
    cause = busy_cause(err)
    return f"{status_name(err)} ({cause})" if cause else status_name(err)


def align_down_2m(hpa: int) -> int:
    return hpa & ~(SZ_2M - 1)


def leaf_name(leaf: int) -> str:
    return LEAF_NAMES.get(leaf, f"leaf {leaf}")
