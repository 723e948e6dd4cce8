"""Footprints: what a parked CPU's next step may read and change, for partial-order search.

DPOR and POS treat two steps as commuting when neither changes what the other
touches. A footprint depends on the step's primitive, target and operands
and, for a conditional atomic, on the slot's current value; all of these are
the same when a recorded prefix is replayed, so a replay shows the same
footprints. Over-approximating is safe (less reduction); missing an object is
not, so every choice below errs towards dependence:

- a refcount slot: ``atomic_read`` reads it, every other atomic writes it,
  except that a conditional atomic (``inc_not_zero``, ``cmpxchg``, …) that would
  leave the slot as it is only reads it: :meth:`Footprints.pending` judges a
  parked one in the current state (its operands are on the board), and
  :meth:`Footprints.effect` judges one that ran by the values before and after;
- ``pamt_lock``: ``spin_lock`` and ``spin_unlock`` both read and write it, held
  or not (a CPU blocked on it stays parked with this footprint), and say that
  they take and release it (``Access.acquires``/``releases``): DPOR reorders
  critical sections at their acquires (``schedulers/races.py``). The module's
  PAMT entry locks are try-locks, whose failure is an outcome: never marked;
- the PAMT page pool, one object per CPU partition (see ``PamtPagePool.alloc``):
  ``alloc_page`` by CPU c writes partition c, ``__free_page`` writes the freed
  page's partition (its index is the point's target). PAMT.ADD and PAMT.REMOVE
  touch no partition, although they move pages between a CPU and the module:
  ``alloc_page`` only claims free pages, and a page the module takes or gives
  back is not free before or after, so they commute with it. Against a
  ``__free_page`` or an ADD of another CPU on the same page, one of the two is
  a slip that fails in either order (the page is not its caller's, whichever
  owner it sees), the other succeeds in either order, and both orders end in
  the same owners and the same ``pamt_pages_lost`` kind; only the record's
  detail word (which owner the failed transfer saw) differs. Verdicts are
  kind sets, so the search treats them as commuting. Counting the pool as
  written made every ADD and REMOVE race with the other CPUs' allocations:
  ``v6`` at 2 CPUs x 1 round needed 260 complete executions, now 38;
- with one range, not even ``alloc_page`` and ``__free_page`` touch the pool
  (:attr:`Footprints.pool_commutes`). The only step that depends on another's
  order is CPU c's first-fit alloc against a free, by another CPU, of a page
  of c's partition (a pair c added, given back by that CPU's REMOVE). Freed
  first, the alloc may take that page p; allocated first, it takes the page q
  it takes anyway, which the other order leaves free. Either the two orders
  end in the same owners (p was not the lowest free page), or they differ
  only by swapping p and q: two free pages of one partition, in the one
  range's spare slots, which no step tells apart (every partition page is
  walked alike, and footprints name partitions, not pages), so what follows
  is the same up to the swap and so are the kinds, which name no pool page.
  A stale address of the freed page (a double free or a use after free by a
  slip) fails in both orders as a transfer of a page that is not its
  caller's: ``pamt_pages_lost`` either way, as for ADD above. Two frees into
  one partition leave the same owners in either order. The argument needs
  every alloc to be served from its own partition; the pool counts the ones
  that are not (``PamtPagePool.strayed``), and the explorer stops with an error
  rather than claim a proof when one was (``Session``). With two ranges the
  pages of a partition lie in different ranges, whose entries an ADD walks
  differently, so they keep the partition objects. ``v6`` at 2 CPUs x 2
  rounds: 1,925 complete executions -> 587; ``locked`` 87 -> 35;
- a range's PAMT in the module: ADD and REMOVE write it, AUG and RECLAIM read it;
- the 4 KiB pages CPU c uses in range r (no other CPU touches them): AUG and
  RECLAIM by c write them, REMOVE of r reads every CPU's;
- the private no-op and status leaves touch the whole module, conservatively.

With two-step SEAMCALLs (the module holds its PAMT entry try-locks between
the steps, docs/design.md) a PAMT SEAMCALL is two points, ``<leaf>`` (begin) and
``<leaf>.end``, and the range's 2 MiB entry lock is one more object:

- begin of ADD or REMOVE tries the entry exclusive: writes the lock (a try that
  fails writes nothing, so this over-approximates);
- begin of AUG or RECLAIM takes it shared: reads the lock and the range's PAMT
  (which decides how far the walk goes). When the range has no PAMT the walk
  ends at the 2 MiB leaf and promotes it to exclusive, which this footprint
  does not say. That only orders two such begins on a PAMT-less range, and
  whichever goes first holds the entry exclusive until its end answers
  TDX_MISSING_PAMT_PAGE_PAIR / TDX_PAGE_METADATA_INCORRECT with
  ``use_without_pamt`` (no ADD can get in: it writes the lock), so both orders
  reach the same kind set. Counting the lock as written made every pair of
  AUGs on a range dependent: ``locked`` at 2 CPUs x 2 rounds went from 174
  complete executions to more than 11,000;
- end does what the one-step call does (above) and releases: ADD/REMOVE write
  the lock, AUG/RECLAIM read it (a shared release commutes with a shared take
  and is ordered against an exclusive try, which writes);
- a PAMT.ADD's page pair: pool pages live in the guest ranges' spare slots
  (machine/pool_layout.py), so a pair page may lie in another range B, and ADD
  walks it: B's 2 MiB entry shared, then the page's 4 KiB entry shared if B has
  a PAMT. The step's target names only the range added, not the pair, so the
  begin and the end of ADD of A write the entry lock of *every* other range:
  ordered against ADD/REMOVE of B (which take B exclusive: BUSY one way, not the
  other) and against AUG/RECLAIM of B, whose walk promotes B's entry to
  exclusive when B has no PAMT (then one of the two is BUSY, whichever comes
  second). That over-approximates (a pair in A, or AUG of a B with a PAMT,
  commutes) but only where two CPUs use different ranges; with one range no
  pair page is walked. The pair page's 4 KiB entry and its in-use check are no
  object: the layout puts pool pages above every slot a CPU AUGs, so no other
  step takes that entry exclusive or assigns that page;
- the 1 GiB entry (always shared: no call here takes it exclusive) and the
  entries of pool pages at POOL_BASE (ranges without a module PAMT, only ever
  walked shared) commute with every step, and 4 KiB guest entries are
  CPU-private (each CPU its own pages), so none of them is an object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from shmpamt import tdx
from shmpamt.explorer.board import OPS
from shmpamt.machine.atomic import wrap32
from shmpamt.machine.kernel import END_SUFFIX
from shmpamt.machine.seamcall import two_phase_default
from shmpamt.schedulers.base import Access

LOCK: Final = 0
MODULE: Final = 2
_POOL: Final = 4 << 24
_RC: Final = 1 << 24
_PAMT: Final = 2 << 24
_PAGES: Final = 3 << 24
_ENTRY_LOCK: Final = 5 << 24
_LOCKS: Final = frozenset({LOCK})
_CPU_BITS: Final = 8  # at most 256 CPUs per range in the page ids

_ADD: Final = tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_ADD)
_REMOVE: Final = tdx.leaf_name(tdx.TDH_PHYMEM_PAMT_REMOVE)
_USE: Final = frozenset(
    {tdx.leaf_name(tdx.TDH_MEM_PAGE_AUG), tdx.leaf_name(tdx.TDH_PHYMEM_PAGE_RECLAIM)}
)
_EXCLUSIVE_BEGIN: Final = frozenset({_ADD, _REMOVE})


def _pages(r: int, cpu: int) -> int:
    return _PAGES + (r << _CPU_BITS) + cpu


#: atomics that may leave their slot alone: if the value did not change, they only read it
CONDITIONAL: Final = frozenset(
    OPS.index(op)
    for op in (
        "atomic_inc_not_zero", "atomic_add_unless", "atomic_inc_unless_negative",
        "atomic_dec_unless_positive", "atomic_dec_if_positive", "atomic_cmpxchg",
    )
)  # fmt: skip


def _would_write(op: str, v: int, a: int, b: int) -> bool:
    """Whether a conditional atomic changes a slot holding ``v`` (kernel semantics)."""
    if op == "atomic_inc_not_zero":
        return v != 0
    if op == "atomic_add_unless":
        return v != b and a != 0
    if op == "atomic_inc_unless_negative":
        return v >= 0
    if op == "atomic_dec_unless_positive":
        return v <= 0
    if op == "atomic_dec_if_positive":
        return wrap32(v - 1) >= 0  # INT_MIN - 1 wraps to INT_MAX, as in the kernel
    if op == "atomic_cmpxchg":
        return v == a and a != b
    raise ValueError(f"{op} is not a conditional atomic")


#: how a claim names the pool rule (one range: allocs and frees commute)
POOL_RULE: Final = "alloc_page and __free_page commuting (one range)"


def dependence_reductions(ranges: int) -> tuple[str, ...]:
    """What a claim must name besides symmetry: the orders the footprints leave out on
    purpose for this scenario, each resting on an argument of the module docstring."""
    return (POOL_RULE,) if ranges == 1 else ()


class Footprints:
    """Footprint of (op index, target, cpu), computed once per distinct step."""

    def __init__(self, cpus: int, two_phase: bool | None = None, ranges: int = 1) -> None:
        """``two_phase``: whether PAMT SEAMCALLs are begin + end (None: the default);
        ``ranges``: the 2 MiB ranges whose spare slots hold pool pages (a pair's walk)."""
        self._cpus = cpus
        self._ranges = ranges
        #: the claim's names for the orders this relation leaves out (module docstring)
        self.reductions = dependence_reductions(ranges)
        #: allocs and frees commute (one range); the session checks the premise, every
        #: alloc served from its own partition, after each execution
        self.pool_commutes = POOL_RULE in self.reductions
        self._two_phase = two_phase_default() if two_phase is None else two_phase
        self._pool = tuple(_POOL + c for c in range(cpus))
        self._cache: dict[tuple[int, int, int], Access] = {}
        self._reads: dict[int, Access] = {}

    def of(self, op: int, target: int, cpu: int) -> Access:
        key = (op, target, cpu)
        a = self._cache.get(key)
        if a is None:
            a = self._cache[key] = self._compute(OPS[op], target, cpu)
        return a

    def pending(
        self,
        op: int,
        target: int,
        cpu: int,
        slots: Sequence[int] | Mapping[int, int],
        a: int,
        b: int,
    ) -> Access:
        """The footprint of a parked step in the state it is parked in: a conditional
        atomic that would leave its slot as it is (``slots``: the refcounts now, or just
        the target's; ``a``, ``b``: the operands of add_unless and cmpxchg) only reads it.

        Sound for DPOR's sleep sets and blocked-CPU races, which use a parked step's
        footprint only at this state and, for a sleeper, until a dependent step runs:
        only a write of the slot can change whether the atomic would write, and a
        write conflicts with the read footprint, which wakes the sleeper."""
        if op in CONDITIONAL and not _would_write(OPS[op], slots[target], a, b):
            return self._read(target)
        return self.of(op, target, cpu)

    def effect(self, op: int, target: int, cpu: int, before: int, after: int) -> Access:
        """What a step that ran did: its footprint, or a read if a conditional atomic
        left its slot as it was (a write of the same value commutes like a read)."""
        if op in CONDITIONAL and before == after:
            return self._read(target)
        return self.of(op, target, cpu)

    def _read(self, target: int) -> Access:
        """A read of refcount slot ``target``: one object per slot, so that footprints
        compare by identity (DPOR checks every replayed step's against its record)."""
        a = self._reads.get(target)
        if a is None:
            a = self._reads[target] = Access.of(reads=(_RC + target,))
        return a

    def _compute(self, op: str, target: int, cpu: int) -> Access:
        if op.endswith(END_SUFFIX):
            leaf = op[: -len(END_SUFFIX)]
            one = self._one_step(leaf, target, cpu)
            lock: tuple[int, ...] = (_ENTRY_LOCK + target,)
            if leaf == _ADD:
                lock = self._pair_locks(target)
            if leaf in _EXCLUSIVE_BEGIN:
                return Access(one.reads, one.writes | frozenset(lock))
            return Access(one.reads | frozenset(lock), one.writes)
        if self._two_phase and (op in _EXCLUSIVE_BEGIN or op in _USE):
            lock = (_ENTRY_LOCK + target,)
            if op == _ADD:
                return Access.of(writes=self._pair_locks(target))
            if op in _EXCLUSIVE_BEGIN:
                return Access.of(writes=lock)
            return Access.of(reads=(_PAMT + target, *lock))
        return self._one_step(op, target, cpu)

    def _pair_locks(self, target: int) -> tuple[int, ...]:
        """The entry locks a two-step ADD of ``target`` may hold: its own, exclusive,
        and, for a pair page in another range, that range's, shared."""
        pair = range(self._ranges) if self._ranges > 1 else ()  # one range: no other
        return tuple(_ENTRY_LOCK + r for r in sorted({target, *pair}))

    def _one_step(self, op: str, target: int, cpu: int) -> Access:
        if op == "atomic_read":
            return self._read(target)
        if op.startswith("atomic"):
            return Access.of(writes=(_RC + target,))
        if op == "spin_lock":
            return Access(_LOCKS, _LOCKS, acquires=_LOCKS)
        if op == "spin_unlock":
            return Access(_LOCKS, _LOCKS, releases=_LOCKS)
        if op in ("alloc_page", "free_page") and self.pool_commutes:
            return Access.of()
        if op == "alloc_page":
            return Access.of(writes=(_POOL + cpu,))
        if op == "free_page":
            part = target % self._cpus if target >= 0 else None
            return Access.of(writes=self._pool if part is None else (_POOL + part,))
        if op == _ADD:
            return Access.of(writes=(_PAMT + target,))
        if op == _REMOVE:
            every_cpu = [_pages(target, c) for c in range(self._cpus)]
            return Access.of(reads=every_cpu, writes=(_PAMT + target,))
        if op in _USE:
            return Access.of(reads=(_PAMT + target,), writes=(_pages(target, cpu),))
        return Access.of(writes=(MODULE, LOCK, *self._pool))
