"""The violation catalogue (semantics.md section 4) and the shared log that records it.

Any process may append: the daemon for what a SEAMCALL reveals, the page pool
for leaks and double frees, CPUs for failed gets, the runner for quiescence.
Counts are exact (one atomic counter per name) even if the record ring fills.
Detection is generic: nothing here knows which variant is running.
"""

from __future__ import annotations

import struct
import time
from dataclasses import asdict, dataclass
from typing import Final

from shmpamt.atomic import RefcountArray
from shmpamt.ipc import Segment, make_name

USE_WITHOUT_PAMT: Final = "use_without_pamt"
REMOVE_WHILE_IN_USE: Final = "remove_while_in_use"
REMOVE_ABSENT: Final = "remove_absent"
ADD_PRESENT: Final = "add_present"
GET_FAILED: Final = "get_failed"
QUIESCENT_MISMATCH: Final = "quiescent_mismatch"
PAMT_PAGES_LOST: Final = "pamt_pages_lost"
LOCK_LEAKED: Final = "lock_leaked"

VIOLATIONS: Final[tuple[str, ...]] = (
    USE_WITHOUT_PAMT,
    REMOVE_WHILE_IN_USE,
    REMOVE_ABSENT,
    ADD_PRESENT,
    GET_FAILED,
    QUIESCENT_MISMATCH,
    PAMT_PAGES_LOST,
    LOCK_LEAKED,
)
MEANING: Final = {
    USE_WITHOUT_PAMT: "a 4 KiB page was assigned or in use while its range's PAMT was absent",
    REMOVE_WHILE_IN_USE: "PAMT.REMOVE issued while 4 KiB pages of the range were assigned",
    REMOVE_ABSENT: "PAMT.REMOVE issued for a range whose PAMT was absent",
    ADD_PRESENT: "PAMT.ADD issued for a range whose PAMT was present",
    GET_FAILED: "tdx_pamt_get returned an error although no fault was injected",
    QUIESCENT_MISMATCH: "with every CPU idle, a refcount is off its initial value or a PAMT "
    "is present with no user",
    PAMT_PAGES_LOST: "PAMT pages leaked, double-freed, or freed while the module owns them",
    LOCK_LEAKED: "pamt_lock still held at the end, or held by a dead CPU",
}
_CODE: Final = {name: i for i, name in enumerate(VIOLATIONS)}

# Detail codes carried in a record's ``a``/``b`` fields, per violation.
LOST_LEAKED: Final = 1  # page still owned by a CPU at quiescence
LOST_DOUBLE_FREE: Final = 2
LOST_FREED_BY_MODULE_OWNER: Final = 3  # freed while the module owns it
LOST_NOT_OWNED: Final = 4  # handed to PAMT.ADD by a CPU that does not own it
LOST_HELD_BY_MODULE: Final = 5  # module holds pages of a PAMT nobody uses at quiescence

QUIESCENT_REFCOUNT: Final = 1  # c of a quiescent_mismatch: a = value, b = expected
QUIESCENT_PAMT_PRESENT: Final = 2  # c of a quiescent_mismatch: PAMT present, nobody uses it

NO_CPU: Final = -1
NO_RANGE: Final = -1
NO_LEAF: Final = -1

# kind, cpu, range, leaf, ts_ns, a, b, c
_REC: Final = struct.Struct("<iiiiqqqq")
_REC_SIZE: Final = 48
_HDR_WORDS: Final = 16  # next index, committed, counts[8], spare
KIND_VIOLATIONS: Final = 0x564C0002
_FIRSTS: Final = len(VIOLATIONS)
DEFAULT_CAPACITY: Final = 4096


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
    from shmpamt.tdx import leaf_name

    who = f"cpu {v.cpu}" if v.cpu >= 0 else "the runner"
    where = f"range {v.range}" if v.range >= 0 else "the system"
    leaf = leaf_name(v.leaf) if v.leaf >= 0 else ""
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
            return f"tdx_pamt_get on {where} by {who} returned {v.a} with no fault injected"
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
                LOST_HELD_BY_MODULE: "held by the module for a PAMT nobody uses",
            }.get(v.b, "lost")
            return f"PAMT page {v.a:#x} {why}"
        case "lock_leaked":
            if v.a:
                return f"pamt_lock held by cpu {v.cpu} (pid {v.a}), which is dead"
            return "pamt_lock still held when every CPU was idle"
    return v.name


class ViolationLog:
    """Shared-memory log of violations; safe to append from any process."""

    def __init__(self, segment: Segment, capacity: int) -> None:
        self.segment = segment
        self.name = segment.name
        self.capacity = capacity
        n = _FIRSTS + capacity  # slot k < _FIRSTS: the first record of kind k
        self._hdr = RefcountArray.over(segment, 0, _HDR_WORDS)
        self._flags = RefcountArray.over(segment, _HDR_WORDS * 4, n)
        self._rec_base = _HDR_WORDS * 4 + n * 4
        self._buf = segment.payload

    @staticmethod
    def _size(capacity: int) -> int:
        n = _FIRSTS + capacity
        return _HDR_WORDS * 4 + n * 4 + n * _REC_SIZE

    @classmethod
    def create(cls, capacity: int = DEFAULT_CAPACITY, token: str | None = None) -> ViolationLog:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        seg = Segment.create(make_name("violations", token), KIND_VIOLATIONS, cls._size(capacity))
        return cls(seg, capacity)

    @classmethod
    def attach(cls, name: str) -> ViolationLog:
        seg = Segment.attach(name, KIND_VIOLATIONS)
        cap = (seg.payload_size - _HDR_WORDS * 4) // (4 + _REC_SIZE) - _FIRSTS
        if cls._size(cap) != seg.payload_size:
            seg.close()
            raise ValueError(f"{name}: payload size does not match a violation log")
        return cls(seg, cap)

    def record(
        self,
        name: str,
        cpu: int = NO_CPU,
        range_: int = NO_RANGE,
        leaf: int = NO_LEAF,
        a: int = 0,
        b: int = 0,
        c: int = 0,
    ) -> None:
        code = _CODE[name]  # KeyError for a name outside the catalogue
        if self._hdr.fetch_add(2 + code, 1) == 0:
            # The first of each kind has a slot of its own, so a flood of one kind
            # can never leave another kind without an example.
            slot = code
        else:
            idx = self._hdr.fetch_add(0, 1)
            if idx >= self.capacity or idx < 0:
                return  # ring full: the count above is still exact
            slot = _FIRSTS + idx
        idx = slot
        _REC.pack_into(
            self._buf,
            self._rec_base + idx * _REC_SIZE,
            code,
            cpu,
            range_,
            leaf,
            time.monotonic_ns(),
            a,
            b,
            c,
        )
        # Invariant: a record is visible to readers only once fully written.
        self._flags.set(idx, 1)

    def counts(self) -> dict[str, int]:
        return {name: self._hdr.read(2 + i) for i, name in enumerate(VIOLATIONS)}

    def total(self) -> int:
        return sum(self.counts().values())

    def records(self) -> list[Violation]:
        n = _FIRSTS + min(max(self._hdr.read(0), 0), self.capacity)
        out = []
        for idx in range(n):
            if not self._flags.read(idx):
                continue
            code, cpu, rng, leaf, ts, a, b, c = _REC.unpack_from(
                self._buf, self._rec_base + idx * _REC_SIZE
            )
            out.append(Violation(VIOLATIONS[code], cpu, rng, leaf, ts, a, b, c))
        out.sort(key=lambda v: v.ts_ns)
        return out

    def reset(self) -> None:
        """Forget everything (between explore executions, with every CPU parked)."""
        n = _FIRSTS + min(max(self._hdr.read(0), 0), self.capacity)
        for idx in range(n):
            self._flags.set(idx, 0)
        for w in range(_HDR_WORDS):
            self._hdr.set(w, 0)

    def close(self) -> None:
        self._hdr.close()
        self._flags.close()
        self._buf = memoryview(b"")
        self.segment.close()
