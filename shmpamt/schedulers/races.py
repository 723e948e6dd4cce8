"""Happens-before and races over one executed sequence of steps, for DPOR's analysis.

An event is a CPU and the :class:`Access` it performed. Event ``i`` happens
before event ``j`` (i < j) when a chain of program-order and dependence edges
leads from one to the other. Two dependent events of different CPUs are in a
*race* when the edge between them is the only such chain: nothing else
orders them, so swapping them may give a different outcome. Relations are
bit masks over event indices (Python integers), so unions are cheap.

Direct predecessors are found per object rather than by comparing all pairs:
a write to ``o`` follows the last write of ``o`` and the reads since; a read
follows the last write. Older accesses of ``o`` happen before those, so they
can never race with the new event.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Final

from shmpamt.schedulers.base import Access

#: the object a halting step writes (the execution stops after it, so it disables every
#: other CPU's next step) and every step reads implicitly; no footprint names it
HALT: Final = -1


class Trace:
    """The happens-before relation of one execution; races of real or hypothetical events."""

    def __init__(self, events: Sequence[tuple[int, Access]] = ()) -> None:
        self.cpus: list[int] = []
        self.accesses: list[Access] = []
        self._by_cpu: dict[int, list[int]] = {}
        self._written: dict[int, list[int]] = {}
        self._read: dict[int, list[int]] = {}
        #: hb[j]: mask of the events that happen before event j
        self.hb: list[int] = []
        for cpu, access in events:
            self.add(cpu, access)

    def add(self, cpu: int, access: Access) -> None:
        """Append an event (it depends only on the events before it)."""
        j = len(self.cpus)
        self.hb.append(self._closure(self.direct(cpu, access, j)))
        self.cpus.append(cpu)
        self.accesses.append(access)
        self._by_cpu.setdefault(cpu, []).append(j)
        for o in access.writes:
            self._written.setdefault(o, []).append(j)
        for o in access.reads:
            self._read.setdefault(o, []).append(j)

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` events: a stateless search's next execution shares them."""
        if n >= len(self.cpus):
            return
        del self.cpus[n:], self.accesses[n:], self.hb[n:]
        for index in (self._by_cpu, self._written, self._read):
            for key, events in list(index.items()):
                del events[bisect_left(events, n) :]
                if not events:
                    del index[key]

    def __len__(self) -> int:
        return len(self.cpus)

    def _closure(self, direct: Sequence[int]) -> int:
        mask = 0
        for d in direct:
            mask |= self.hb[d] | (1 << d)
        return mask

    def direct(self, cpu: int, access: Access, k: int) -> list[int]:
        """Direct predecessors among events ``< k`` of ``(cpu, access)`` placed at ``k``."""
        out: set[int] = set()
        own = self._by_cpu.get(cpu, [])
        n = bisect_left(own, k)
        if n:
            out.add(own[n - 1])
        if HALT in access.writes:
            # Every step reads HALT: a halting step follows the latest step of each CPU.
            for events in self._by_cpu.values():
                m = bisect_left(events, k)
                if m:
                    out.add(events[m - 1])
        for o in access.reads | access.writes:
            written = self._written.get(o, [])
            w = bisect_left(written, k)
            last_write = written[w - 1] if w else -1
            if last_write >= 0:
                out.add(last_write)
            if o in access.writes:
                reads = self._read.get(o, [])
                out.update(reads[bisect_left(reads, last_write + 1) : bisect_left(reads, k)])
        return sorted(out)

    def races(self, cpu: int, access: Access, k: int) -> tuple[list[int], int]:
        """Events ``< k`` racing with ``(cpu, access)`` placed at ``k``; its direct-pred mask.

        A direct predecessor of another CPU is dependent by construction; it is
        in a race unless it also happens before another direct predecessor.
        """
        direct = self.direct(cpu, access, k)
        covered = 0
        dmask = 0
        for d in direct:
            covered |= self.hb[d]
            dmask |= 1 << d
        racing = [d for d in direct if self.cpus[d] != cpu and not (covered >> d) & 1]
        if access.acquires:
            racing = self._lock_races(racing, direct, access)
        return racing, dmask

    def _lock_races(self, racing: list[int], direct: list[int], access: Access) -> list[int]:
        """Races of a blocking acquire: a release ``u`` it follows stands for the acquire
        ``a`` of the same lock that ``u``'s CPU released (see below), when nothing but
        ``u`` orders ``a`` before the new event.

        At the state before ``u`` the lock is held by ``u``'s CPU, so no execution
        from there takes it before ``u``: the race with ``u`` has no reversal, and
        trying one only ends with every CPU asleep. An order in which the new event
        comes first exists only before ``a``, where the lock was free: that is
        the race to reverse: critical sections are ordered by their acquires.
        """
        out: list[int] = []
        for d in racing:
            held = self.accesses[d].releases & access.acquires
            a = self._acquire_of(d, held) if held else -1
            if a < 0:
                out.append(d)
                continue
            others = [x for x in direct if x != d]
            # Invariant: a is before d in d's CPU's program order (it took what d frees).
            assert a < d and self.cpus[a] == self.cpus[d]
            if not any(x == a or (self.hb[x] >> a) & 1 for x in others):
                out.append(a)
        return sorted(set(out))

    def _acquire_of(self, u: int, locks: frozenset[int]) -> int:
        """The acquire of ``locks`` that release ``u`` ends: the latest step before ``u``
        of ``u``'s CPU that took or freed one of them, if it took it (else -1: the
        CPU may not hold the lock, and the race with ``u`` is kept)."""
        cpu = self.cpus[u]
        own = self._by_cpu.get(cpu, [])
        for m in reversed(own[: bisect_left(own, u)]):
            a = self.accesses[m]
            if a.releases & locks:
                return -1
            if a.acquires & locks:
                return m
        return -1

    def initials(self, i: int, cpu: int, dmask: int, k: int) -> set[int]:
        """CPUs that may start ``notdep(i).e``: the reversal of race ``i`` with ``e`` at ``k``.

        ``notdep(i)`` is the events between ``i`` and ``k`` that do not happen
        after ``i``; an initial is a CPU whose first event there has no
        predecessor there. ``e`` itself happens after ``i`` through the race,
        so its predecessors in the sequence are read off its direct ones only.
        """
        vmask = 0
        out: set[int] = set()
        for m in range(i + 1, k):
            if (self.hb[m] >> i) & 1:
                continue
            if not self.hb[m] & vmask:
                out.add(self.cpus[m])
            vmask |= 1 << m
        if not dmask & vmask:
            out.add(cpu)
        return out
