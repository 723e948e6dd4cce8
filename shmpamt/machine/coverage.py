"""Interleaving coverage for free-running stress: which cross-CPU windows were hit.

A *window* is a pair of consecutive primitives (X1, X2) one CPU runs on one
refcount slot (a 2 MiB range); it is *hit* when another CPU runs a primitive Y
on the same slot between them, and (X1, X2, Y) is then an *interleaving*.
KCSAN's watchpoints ask the same question of one memory access: did anyone
touch this while I paused? Counting the answers tells targeted chaos which
windows are still unexplored (:mod:`shmpamt.machine.chaos`) and gives the run a
coverage figure.

The table lives in shared memory (a region of the CPU board) and is updated
by the CPUs themselves with a handful of word accesses per primitive:

- each CPU publishes its open window ``(slot, X1)`` in one word;
- a CPU about to run Y on a slot sets bit Y in the *intruder mask* of every
  other CPU whose window is open on that slot;
- a CPU about to run X2 takes its own mask (swap to 0) and bumps the
  counter of every (X1, X2, Y) in it.

Counts are statistics, not invariants: a lost bit (two intruders racing for
one mask word past the retry bound) only lowers a count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from shmpamt import tdx
from shmpamt.machine.kernel import PRIMITIVES
from shmpamt.records.results import WindowCoverage

#: primitives by name; an op's *code* is its index (kinds 0..30, so a mask fits an int32)
OPS: Final = (
    *PRIMITIVES,
    tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_ADD),
    tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_REMOVE),
    tdx.leaf_name(tdx.TDH_MEM_PAGE_AUG),
    tdx.leaf_name(tdx.TDH_PHYMEM_PAGE_RECLAIM),
    "other",
)
CODE: Final = {name: i for i, name in enumerate(OPS)}
OTHER: Final = CODE["other"]
#: outcomes that send a protocol down a different path get their own code (the slow
#: path after a failed fast path is where the windows are): op name -> code of "op!"
_OUTCOME_OPS: Final = (
    "atomic_inc_not_zero",
    "atomic_add_unless",
    "atomic_inc_unless_negative",
    "atomic_dec_unless_positive",
    "atomic_dec_if_positive",
    "atomic_dec_and_test",
    "alloc_page",
    tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_ADD),
    tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_REMOVE),
)
OUTCOME: Final = {name: len(OPS) + i for i, name in enumerate(_OUTCOME_OPS)}
NCODES: Final = len(OPS) + len(_OUTCOME_OPS)
# Invariant: an intruder mask holds one bit per code in a non-negative int32.
assert NCODES <= 31, NCODES

#: primitives whose target is a refcount slot (the others inherit the CPU's current slot)
SLOTTED: Final = frozenset(
    name for name in OPS if name.startswith("atomic") or name.startswith("TDH.")
)
SEAMCALLS: Final = frozenset(name for name in OPS if name.startswith("TDH."))
ATOMICS: Final = frozenset(name for name in OPS if name.startswith("atomic"))
_RETRIES: Final = 8


def code_name(code: int) -> str:
    if code >= len(OPS):
        return _OUTCOME_OPS[code - len(OPS)] + "!"
    return OPS[code]


def outcome_code(op: str, result: int) -> int:
    """The op's code refined by what it returned: ``op!`` when it took the other path.

    ``!`` means: a conditional atomic refused (returned 0, or < 0 for
    dec_if_positive), dec_and_test reached zero, alloc_page returned NULL, a
    PAMT.ADD/REMOVE returned an error.
    """
    refined = OUTCOME.get(op)
    if refined is None:
        return CODE.get(op, OTHER)
    if op == "atomic_dec_and_test":
        took_other = result != 0
    elif op == "atomic_dec_if_positive":
        took_other = result < 0
    elif op in SEAMCALLS:
        took_other = result != 0
    else:
        took_other = result == 0
    return refined if took_other else CODE[op]


class Words(Protocol):
    """Shared int32 words with the atomics the table needs (a RefcountArray, or a fake)."""

    def read(self, i: int) -> int: ...

    def set(self, i: int, v: int) -> None: ...

    def inc(self, i: int) -> None: ...

    def inc_return(self, i: int) -> int: ...

    def cmpxchg(self, i: int, old: int, new: int) -> int: ...


@dataclass(frozen=True)
class Layout:
    """Word offsets of the table for ``cpus`` CPUs."""

    cpus: int

    # per CPU: [window, intruder mask]
    @property
    def pairs(self) -> int:
        """PAIR_SEEN[x1][x2]: times a CPU ran x2 right after x1 on one slot."""
        return 2 * self.cpus

    @property
    def hits(self) -> int:
        """PAIR_HITS[x1][x2]: intrusions counted into that window."""
        return self.pairs + NCODES * NCODES

    @property
    def landed(self) -> int:
        """LANDED[x1][y]: times y ran while another CPU's window after x1 was open."""
        return self.hits + NCODES * NCODES

    @property
    def triples(self) -> int:
        """TRIPLE[x1][x2][y]: times y ran inside the window (x1, x2)."""
        return self.landed + NCODES * NCODES

    @property
    def distinct(self) -> int:
        """Number of (x1, x2, y) seen at least once, kept so progress needs one read."""
        return self.triples + NCODES**3

    @property
    def words(self) -> int:
        return self.distinct + 1


def words_needed(cpus: int) -> int:
    return Layout(cpus).words


class WindowTable:
    """The CPUs' shared view of which windows were seen and hit (see the module docstring)."""

    def __init__(self, words: Words, cpus: int) -> None:
        self.words = words
        self.cpus = cpus
        self.layout = Layout(cpus)

    # -- a CPU's side ---------------------------------------------------------

    def open_window(self, cpu: int, slot: int, x1: int, locked: bool) -> None:
        self.words.set(2 * cpu, ((slot + 1) << 6) | (int(locked) << 5) | (x1 + 1))

    def close_window(self, cpu: int) -> None:
        self.words.set(2 * cpu, 0)

    def intrude(self, cpu: int, slot: int, y: int) -> list[tuple[int, bool]]:
        """``cpu`` is about to run ``y`` on ``slot``: mark every window open there, and
        return each one's (x1, whether its CPU holds pamt_lock)."""
        key = slot + 1
        bit = 1 << y
        w = self.words
        found: list[tuple[int, bool]] = []
        for other in range(self.cpus):
            if other == cpu:
                continue
            win = w.read(2 * other)
            if win == 0 or win >> 6 != key:
                continue
            x1 = (win & 31) - 1
            found.append((x1, bool(win & 32)))
            w.inc(self.layout.landed + x1 * NCODES + y)
            m = w.read(2 * other + 1)
            for _ in range(_RETRIES):
                if m & bit:
                    break
                seen = w.cmpxchg(2 * other + 1, m, m | bit)
                if seen == m:
                    break
                m = seen
        return found

    def take(self, cpu: int, x1: int, x2: int) -> int:
        """``cpu`` is about to run ``x2`` right after ``x1``: count its window, return the
        number of new interleavings it found."""
        w = self.words
        lay = self.layout
        pair = x1 * NCODES + x2
        w.inc(lay.pairs + pair)
        m = self.take_mask(cpu)
        new = 0
        y = 0
        while m:
            if m & 1:
                w.inc(lay.hits + pair)
                if w.inc_return(lay.triples + pair * NCODES + y) == 1:
                    w.inc(lay.distinct)
                    new += 1
            m >>= 1
            y += 1
        return new

    def take_mask(self, cpu: int) -> int:
        """Swap the intruder mask to 0 and return it."""
        w = self.words
        m = w.read(2 * cpu + 1)
        for _ in range(_RETRIES):
            if m == 0:
                return 0
            seen = w.cmpxchg(2 * cpu + 1, m, 0)
            if seen == m:
                return m
            m = seen
        return 0

    def hits_of(self, x1: int, x2: int) -> int:
        return self.words.read(self.layout.hits + x1 * NCODES + x2)

    def landed_of(self, x1: int, y: int) -> int:
        return self.words.read(self.layout.landed + x1 * NCODES + y)

    # -- the runner's side ------------------------------------------------------

    def distinct_interleavings(self) -> int:
        return self.words.read(self.layout.distinct)

    def summary(self, delays: int = 0) -> WindowCoverage:
        """Distinct windows seen and hit, and interleavings; ``delays`` is passed through."""
        lay = self.layout
        seen = hit = 0
        for pair in range(NCODES * NCODES):
            if self.words.read(lay.pairs + pair):
                seen += 1
                if self.words.read(lay.hits + pair):
                    hit += 1
        return WindowCoverage(seen, hit, self.distinct_interleavings(), delays)

    def interleavings(self) -> dict[tuple[str, str, str], int]:
        """Every (X1, X2, Y) seen with its count, by op name (for tests and reports)."""
        lay = self.layout
        out: dict[tuple[str, str, str], int] = {}
        for x1 in range(NCODES):
            for x2 in range(NCODES):
                pair = x1 * NCODES + x2
                if not self.words.read(lay.hits + pair):
                    continue
                for y in range(NCODES):
                    n = self.words.read(lay.triples + pair * NCODES + y)
                    if n:
                        out[(code_name(x1), code_name(x2), code_name(y))] = n
        return out
