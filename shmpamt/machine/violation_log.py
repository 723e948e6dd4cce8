"""The shared log that records violations as they happen.

Any process may append: the daemon for what a SEAMCALL reveals, the page pool
for leaks and double frees, CPUs for failed gets, the runner for quiescence.
Counts are exact (one atomic counter per name) even if the record ring fills.
The catalogue itself (names, meanings, descriptions) is :mod:`shmpamt.records.violations`.
"""

from __future__ import annotations

import struct
import time
from typing import Final

from shmpamt.machine.atomic import RefcountArray
from shmpamt.machine.ipc import Segment, make_name
from shmpamt.records.violations import CODE, NO_CPU, NO_LEAF, NO_RANGE, VIOLATIONS, Violation

# kind, cpu, range, leaf, ts_ns, a, b, c
_REC: Final = struct.Struct("<iiiiqqqq")
_REC_SIZE: Final = 48
_HDR_WORDS: Final = 16  # next index, committed, counts[8], total, spare
_TOTAL: Final = 2 + len(VIOLATIONS)  # every record, one word: what the controller polls
KIND_VIOLATIONS: Final = 0x564C0002
_FIRSTS: Final = len(VIOLATIONS)
DEFAULT_CAPACITY: Final = 4096


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
        code = CODE[name]  # KeyError for a name outside the catalogue
        self._hdr.inc(_TOTAL)
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
        """Violations recorded so far (one read: explore polls it after every step)."""
        return self._hdr.read(_TOTAL)

    def total_view(self) -> tuple[memoryview, int]:
        """A view of the header and the index of ``total`` in it, for an explore CPU
        that reads it at every step (see ``RefcountArray.view``)."""
        return self._hdr.view(), _TOTAL

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
        self._flags.fill(0)
        self._hdr.fill(0)

    def close(self) -> None:
        self._hdr.close()
        self._flags.close()
        self._buf = memoryview(b"")
        self.segment.close()
