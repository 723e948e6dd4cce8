"""The violation catalogue: the names a verdict is made of, and what each one means.

Names are part of the interface (CLI output, JSON reports, tests). This module
imports nothing but the standard library, so the CLI, the pytest plugin and the
report can list and describe violations without loading cffi or posix_ipc.
Detection is generic: nothing here knows which variant is running.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final

from shmpamt import tdx

USE_WITHOUT_PAMT: Final = "use_without_pamt"
REMOVE_WHILE_IN_USE: Final = "remove_while_in_use"
REMOVE_ABSENT: Final = "remove_absent"
ADD_PRESENT: Final = "add_present"
GET_FAILED: Final = "get_failed"
CACHE_GET_ENOMEM: Final = "cache_get_enomem"
QUIESCENT_MISMATCH: Final = "quiescent_mismatch"
PAMT_PAGES_LOST: Final = "pamt_pages_lost"
LOCK_LEAKED: Final = "lock_leaked"
PUT_FAILED: Final = "put_failed"

VIOLATIONS: Final[tuple[str, ...]] = (
    USE_WITHOUT_PAMT,
    REMOVE_WHILE_IN_USE,
    REMOVE_ABSENT,
    ADD_PRESENT,
    GET_FAILED,
    QUIESCENT_MISMATCH,
    PAMT_PAGES_LOST,
    LOCK_LEAKED,
    CACHE_GET_ENOMEM,
    PUT_FAILED,
)
MEANING: Final = {
    USE_WITHOUT_PAMT: "a 4 KiB page was assigned or in use while its range's PAMT was absent",
    REMOVE_WHILE_IN_USE: "PAMT.REMOVE issued while 4 KiB pages of the range were assigned",
    REMOVE_ABSENT: "PAMT.REMOVE issued for a range whose PAMT was absent",
    ADD_PRESENT: "PAMT.ADD issued for a range whose PAMT was present",
    GET_FAILED: "tdx_pamt_get returned an error although no fault was injected",
    CACHE_GET_ENOMEM: "tdx_pamt_get returned -ENOMEM although its cache had been topped up for it",
    QUIESCENT_MISMATCH: "with every CPU idle, a refcount is off its initial value or a PAMT "
    "is present with no user",
    PAMT_PAGES_LOST: "PAMT pages leaked, double-freed, or freed while the module owns them",
    LOCK_LEAKED: "pamt_lock still held at the end, or held by a dead CPU",
    PUT_FAILED: "a PAMT.REMOVE on the put path failed although no fault was injected "
    "(the free path must never fail)",
}
CODE: Final = {name: i for i, name in enumerate(VIOLATIONS)}

# Detail codes carried in a record's ``a``/``b`` fields, per violation.
LOST_LEAKED: Final = 1  # page still owned by a CPU at quiescence
LOST_DOUBLE_FREE: Final = 2
LOST_FREED_BY_MODULE_OWNER: Final = 3  # freed while the module owns it
LOST_NOT_OWNED: Final = 4  # handed to PAMT.ADD by a CPU that does not own it

QUIESCENT_REFCOUNT: Final = 1  # c of a quiescent_mismatch: a = value, b = expected
QUIESCENT_PAMT_PRESENT: Final = 2  # c of a quiescent_mismatch: PAMT present, nobody uses it

GET_FAILED_TOPUP: Final = 1  # c of a get_failed: tdx_topup_pamt_cache failed, not the get

NO_CPU: Final = -1
NO_RANGE: Final = -1
NO_LEAF: Final = -1


@dataclass(frozen=True)
class Violation:
    name: str
    cpu: int
    range: int
    leaf: int
    ts_ns: int
    a: int
    b: int
    c: int = 0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["what"] = describe(self)
        return d


def describe(v: Violation) -> str:
    """One sentence saying what happened, for reports."""
    who = f"cpu {v.cpu}" if v.cpu >= 0 else "the runner"
    where = f"range {v.range}" if v.range >= 0 else "the system"
    leaf = tdx.leaf_name(v.leaf) if v.leaf >= 0 else ""
    match v.name:
        case "use_without_pamt":
            return f"{who} issued {leaf} on page {v.a:#x} of {where} while its PAMT was absent"
        case "remove_while_in_use":
            return f"{who} issued {leaf} on {where} while {v.a} of its 4 KiB pages were assigned"
        case "remove_absent":
            return f"{who} issued {leaf} on {where} whose PAMT was already absent"
        case "add_present":
            return f"{who} issued {leaf} on {where} whose PAMT was already present"
        case "get_failed":
            if v.c == GET_FAILED_TOPUP:
                return (
                    f"tdx_topup_pamt_cache before a get on {where} by {who} returned {v.a} "
                    "with no fault injected"
                )
            return f"tdx_pamt_get on {where} by {who} returned {v.a} with no fault injected"
        case "put_failed":
            return (
                f"tdx_pamt_put on {where} by {who}: its PAMT.REMOVE answered "
                f"{tdx.describe_status(v.a & 0xFFFFFFFFFFFFFFFF)} with no fault injected"
            )
        case "cache_get_enomem":
            return (
                f"tdx_pamt_get on {where} by {who} returned {v.a} although its cache "
                "had been topped up for it"
            )
        case "quiescent_mismatch":
            if v.c == QUIESCENT_PAMT_PRESENT:
                return f"at quiescence {where} still has its PAMT with no user"
            return f"at quiescence the refcount of {where} is {v.a}, expected {v.b}"
        case "pamt_pages_lost":
            why = {
                LOST_LEAKED: f"still owned by cpu {v.cpu} at quiescence (leaked)",
                LOST_DOUBLE_FREE: f"freed twice by {who}",
                LOST_FREED_BY_MODULE_OWNER: f"freed by {who} while the TDX module owns it",
                LOST_NOT_OWNED: f"handed to {leaf} by {who}, which does not own it",
            }.get(v.b, "lost")
            return f"PAMT page {v.a:#x} {why}"
        case "lock_leaked":
            if v.a:
                return f"pamt_lock held by cpu {v.cpu} (pid {v.a}), which is dead"
            return "pamt_lock still held when every CPU was idle"
    return v.name
