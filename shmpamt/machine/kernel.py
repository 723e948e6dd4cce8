"""The kernel primitives a variant may use, each passing one scheduling point.

Variants are written against this object exactly as the kernel code is written
against ``atomic_*``, ``spin_lock`` and the SEAMCALL wrappers, so the two read
side by side. Every primitive first calls ``self.point(op, target)``: empty in
free-running mode, a random delay in chaos mode, a wait for the scheduler's
grant in explore mode (loom's single choke point). Variants never know which.

Refcounts are named by their range index (what ``tdx_get_pamt_refcount``
returns); pages by their physical address.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from shmpamt import tdx
from shmpamt.machine.pool_layout import GUEST_BASE as GUEST_BASE
from shmpamt.machine.pool_layout import POOL_BASE as POOL_BASE
from shmpamt.machine.pool_layout import PoolLayout

if TYPE_CHECKING:
    from shmpamt.machine.atomic import RefcountArray
    from shmpamt.machine.lock import PamtLock

#: every primitive a variant calls that is not a SEAMCALL, in one fixed order: the op
#: tables of the scheduling board, the chaos coverage and the C bridge all start with it
PRIMITIVES: Final[tuple[str, ...]] = (
    "atomic_read", "atomic_set", "atomic_inc", "atomic_dec", "atomic_inc_return",
    "atomic_dec_return", "atomic_dec_and_test", "atomic_inc_not_zero", "atomic_add_unless",
    "atomic_inc_unless_negative", "atomic_dec_unless_positive", "atomic_dec_if_positive",
    "atomic_cmpxchg", "spin_lock", "spin_unlock", "alloc_page", "free_page",
)  # fmt: skip


#: the SEAMCALLs a module holding PAMT locks makes two scheduling points
PHASED_LEAVES: Final = frozenset(
    {
        tdx.TDH_PHYMEM_PAMT_ADD,
        tdx.TDH_PHYMEM_PAMT_REMOVE,
        tdx.TDH_MEM_PAGE_AUG,
        tdx.TDH_PHYMEM_PAGE_RECLAIM,
    }
)
#: REMOVE refusals the module itself records as the protocol's slip (remove_absent,
#: remove_while_in_use): not counted again as a failed put
_MODULE_FINDINGS: Final = frozenset({tdx.TDX_NO_PAMT_PAGE_PAIR, tdx.TDX_PAMT_PAGE_NOT_EMPTY})
#: the op name of a two-step SEAMCALL's second point is the leaf's name plus this
END_SUFFIX: Final = ".end"
#: request flag: the search chose to inject TDX_OPERAND_BUSY; the module answers it
#: without executing the call (the wire: machine/seamcall.py)
REQ_INJECT_BUSY: Final = 1
#: request flags of a two-step SEAMCALL's begin and end (the wire: machine/seamcall.py)
REQ_BEGIN: Final = 2
REQ_END: Final = 4
#: environment switch: "1" makes every SEAMCALL one step (the module takes and drops
#: its locks inside one request), the baseline that tools/bench_explore.py compares
SEAMCALL_STEPS_ENV: Final = "SHMPAMT_SEAMCALL_STEPS"


def two_phase_default() -> bool:
    """Whether SEAMCALLs are two steps unless told otherwise (``SHMPAMT_SEAMCALL_STEPS``)."""
    return os.environ.get(SEAMCALL_STEPS_ENV, "2").strip() != "1"


def module_semantics(two_phase: bool | None = None) -> str:
    """The module semantics a run is judged against, in the words every report prints."""
    tp = two_phase_default() if two_phase is None else two_phase
    steps = "two-step SEAMCALLs" if tp else "one-step SEAMCALLs"
    return f"TDX module: real status codes, PAMT entry try-locks, {steps}"


class Hook(Protocol):
    """Called around every primitive. ``before`` may block (explore) or sleep (chaos)."""

    def before(self, op: str, target: int, a: int = 0, b: int = 0) -> int | None:
        """``a``, ``b``: the operands of ``atomic_add_unless`` and ``atomic_cmpxchg``.
        A true result injects a fault into the step (explore's fault choices): the
        SEAMCALL is asked to answer BUSY, the allocator returns NULL."""
        ...

    def after(self, op: str, target: int, result: int) -> None:
        """``result``: what the primitive returned (a SEAMCALL: its status)."""
        ...


class PagePool(Protocol):
    def alloc(self, cpu: int) -> int | None: ...

    def free(self, cpu: int, hpa: int) -> None: ...

    def index(self, hpa: int) -> int:
        """The pool index of ``hpa``; -1 if it is no pool page."""
        ...


class SeamcallPort(Protocol):
    def call(
        self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0, flags: int = 0
    ) -> tuple[int, int, int, int]: ...


class Kernel:
    """One CPU's view of the kernel: refcounts, pamt_lock, page allocator, SEAMCALL."""

    def __init__(
        self,
        cpu: int,
        refcounts: RefcountArray,
        lock: PamtLock,
        pool: PagePool,
        port: SeamcallPort,
        hook: Hook | None = None,
        alloc_fails: Callable[[], bool] | None = None,
    ) -> None:
        self.cpu = cpu
        self.refcounts = refcounts
        self.pamt_lock = lock
        self._pool = pool
        self._port = port
        self._hook = hook
        # The choke point every primitive calls on both sides; bound once, as it
        # runs at every step (explore: the hook's own methods, one frame less).
        self._before: Callable[..., int | None] = _unhooked if hook is None else hook.before
        self._after: Callable[[str, int, int], None] = _unhooked if hook is None else hook.after
        self._alloc_fails = alloc_fails
        self.warnings = 0
        self.last_warning = ""
        self._warned: set[tuple[str, int]] = set()
        #: injected faults this CPU has seen (alloc failures + injected busy statuses)
        self.injected = 0
        #: TDX_OPERAND_BUSY answers caused by another CPU's SEAMCALL holding an entry
        self.contended = 0
        #: PAMT.REMOVEs that failed with no injected fault and no protocol finding of the
        #: module's (it reports a REMOVE of an absent or used PAMT itself), and the last status
        self.removes_failed = 0
        self.last_remove_failure = 0
        self._two_phase = bool(getattr(port, "two_phase", False))

    # -- the choke point --------------------------------------------------

    # -- for compiled variants (shmpamt/variants/cvariant.py) ----------------

    @property
    def hooked(self) -> bool:
        """A hook runs around primitives: a C variant then sends every atomic through here."""
        return self._hook is not None

    def refcount_words(self) -> tuple[int, int]:
        """(address, count) of the refcount words, for C code to run the same atomics on."""
        seg = self.refcounts.segment
        n = len(self.refcounts)
        # The Kernel's array is a whole segment (create/attach), so slot 0 is the payload's start.
        assert n * 4 == seg.payload_size, "refcount array must span its segment"
        return seg.address, n

    # -- atomic_t ----------------------------------------------------------

    def atomic_read(self, v: int) -> int:
        self._before("atomic_read", v)
        r = self.refcounts.read(v)
        self._after("atomic_read", v, r)
        return r

    def atomic_set(self, v: int, i: int) -> None:
        self._before("atomic_set", v)
        self.refcounts.set(v, i)
        self._after("atomic_set", v, i)

    def atomic_inc(self, v: int) -> None:
        self._before("atomic_inc", v)
        self.refcounts.inc(v)
        self._after("atomic_inc", v, 0)

    def atomic_dec(self, v: int) -> None:
        self._before("atomic_dec", v)
        self.refcounts.dec(v)
        self._after("atomic_dec", v, 0)

    def atomic_inc_return(self, v: int) -> int:
        self._before("atomic_inc_return", v)
        r = self.refcounts.inc_return(v)
        self._after("atomic_inc_return", v, r)
        return r

    def atomic_dec_return(self, v: int) -> int:
        self._before("atomic_dec_return", v)
        r = self.refcounts.dec_return(v)
        self._after("atomic_dec_return", v, r)
        return r

    def atomic_dec_and_test(self, v: int) -> bool:
        self._before("atomic_dec_and_test", v)
        r = self.refcounts.dec_and_test(v)
        self._after("atomic_dec_and_test", v, int(r))
        return r

    def atomic_inc_not_zero(self, v: int) -> bool:
        self._before("atomic_inc_not_zero", v)
        r = self.refcounts.inc_not_zero(v)
        self._after("atomic_inc_not_zero", v, int(r))
        return r

    def atomic_add_unless(self, v: int, a: int, u: int) -> bool:
        self._before("atomic_add_unless", v, a, u)
        r = self.refcounts.add_unless(v, a, u)
        self._after("atomic_add_unless", v, int(r))
        return r

    def atomic_inc_unless_negative(self, v: int) -> bool:
        self._before("atomic_inc_unless_negative", v)
        r = self.refcounts.inc_unless_negative(v)
        self._after("atomic_inc_unless_negative", v, int(r))
        return r

    def atomic_dec_unless_positive(self, v: int) -> bool:
        self._before("atomic_dec_unless_positive", v)
        r = self.refcounts.dec_unless_positive(v)
        self._after("atomic_dec_unless_positive", v, int(r))
        return r

    def atomic_dec_if_positive(self, v: int) -> int:
        self._before("atomic_dec_if_positive", v)
        r = self.refcounts.dec_if_positive(v)
        self._after("atomic_dec_if_positive", v, r)
        return r

    def atomic_cmpxchg(self, v: int, old: int, new: int) -> int:
        self._before("atomic_cmpxchg", v, old, new)
        r = self.refcounts.cmpxchg(v, old, new)
        self._after("atomic_cmpxchg", v, r)
        return r

    def atomic_dec_and_lock(self, v: int) -> bool:
        """Kernel ``atomic_dec_and_lock(v, &pamt_lock)``, built from the hooked primitives."""
        if self.atomic_add_unless(v, -1, 1):
            return False
        self.spin_lock()
        if self.atomic_dec_and_test(v):
            return True
        self.spin_unlock()
        return False

    # -- pamt_lock -----------------------------------------------------------

    def spin_lock(self) -> None:
        self._before("spin_lock", -1)
        self.pamt_lock.acquire()
        self._after("spin_lock", -1, 0)

    def spin_unlock(self) -> None:
        self._before("spin_unlock", -1)
        self.pamt_lock.release()
        self._after("spin_unlock", -1, 0)

    # -- page allocator ----------------------------------------------------

    @property
    def pool_layout(self) -> PoolLayout:
        """Where the pool's pages live (a pool without one: all at POOL_BASE)."""
        layout = getattr(self._pool, "layout", None)
        return layout if isinstance(layout, PoolLayout) else _ABOVE_GUEST

    def alloc_page(self) -> int | None:
        """A 4 KiB page's physical address, or None as alloc_page() returns NULL."""
        chosen = self._before("alloc_page", -1)
        if chosen or (self._alloc_fails is not None and self._alloc_fails()):
            self.injected += 1
            hpa = None
        else:
            hpa = self._pool.alloc(self.cpu)
        self._after("alloc_page", -1, hpa or 0)
        return hpa

    def free_page(self, hpa: int) -> None:
        """``__free_page``; the point's target is the pool page's index (who it may touch)."""
        self._before("free_page", self._pool.index(hpa))
        self._pool.free(self.cpu, hpa)
        self._after("free_page", -1, hpa)

    # -- SEAMCALLs -------------------------------------------------------------

    def seamcall(
        self, leaf: int, rcx: int = 0, rdx: int = 0, r8: int = 0
    ) -> tuple[int, int, int, int]:
        """One SEAMCALL; a PAMT one is two points, ``<leaf>`` then ``<leaf>.end``, when
        the module holds its locks across two requests (the port's ``two_phase``):
        between them other CPUs run and their calls can meet the held entries."""
        target = range_of(rcx)
        name = tdx.leaf_name(leaf)
        # the search may choose to inject BUSY into this call (a fault point's outcome)
        inject = REQ_INJECT_BUSY if self._before(name, target) else 0
        if not self._two_phase or leaf not in PHASED_LEAVES:
            out = self._port.call(leaf, rcx, rdx, r8, inject)
            self._count_busy(out[0])
            self._after(name, target, out[0])
            self._judge_remove(leaf, out[0])
            return out
        out = self._port.call(leaf, rcx, rdx, r8, REQ_BEGIN | inject)
        self._count_busy(out[0])
        self._after(name, target, out[0])
        if out[0] != tdx.SHMPAMT_LOCKS_HELD:
            # refused at begin: BUSY (contended or injected) or an operand error
            self._judge_remove(leaf, out[0])
            return out
        end = name + END_SUFFIX
        self._before(end, target)
        out = self._port.call(leaf, rcx, rdx, r8, REQ_END)
        self._after(end, target, out[0])
        self._judge_remove(leaf, out[0])
        return out

    def _judge_remove(self, leaf: int, status: int) -> None:
        if (
            leaf == tdx.TDH_PHYMEM_PAMT_REMOVE
            and tdx.is_error(status)
            and tdx.busy_cause(status) != "injected"
            and tdx.status_class(status) not in _MODULE_FINDINGS
        ):
            self.removes_failed += 1
            self.last_remove_failure = status

    def _count_busy(self, status: int) -> None:
        """A BUSY answer is injected or contention (the status says which)."""
        cause = tdx.busy_cause(status)
        if cause == "injected":
            self.injected += 1
        elif cause == "contention":
            self.contended += 1

    def tdh_phymem_pamt_add(self, hpa_ps: int, pamt_pages: list[int]) -> int:
        """PAMT.ADD with the two-page list; returns the status word."""
        rdx = pamt_pages[0] if len(pamt_pages) > 0 else 0
        r8 = pamt_pages[1] if len(pamt_pages) > 1 else 0
        return self.seamcall(tdx.TDH_PHYMEM_PAMT_ADD, hpa_ps, rdx, r8)[0]

    def tdh_phymem_pamt_remove(self, hpa_ps: int, pamt_pages: list[int]) -> int:
        """PAMT.REMOVE; on success the returned pages are appended to ``pamt_pages``."""
        err, _, rdx, r8 = self.seamcall(tdx.TDH_PHYMEM_PAMT_REMOVE, hpa_ps)
        if not err:
            pamt_pages.extend(p for p in (rdx, r8) if p)
        return err

    def tdh_mem_page_aug(self, hpa: int) -> int:
        return self.seamcall(tdx.TDH_MEM_PAGE_AUG, hpa | tdx.TDX_PS_4K)[0]

    def tdh_phymem_page_reclaim(self, hpa: int) -> int:
        return self.seamcall(tdx.TDH_PHYMEM_PAGE_RECLAIM, hpa | tdx.TDX_PS_4K)[0]

    # -- misc kernel helpers -------------------------------------------------

    def tdx_get_pamt_refcount(self, hpa: int) -> int:
        return range_of(hpa)

    def tdx_quirk_reset_paddr(self, paddr: int, size: int) -> None:
        """The kernel clears a page the module may have written (MOVDIR64B). The
        rig keeps no page contents, so there is nothing to clear and no step: it
        only refuses a call that is not whole pages."""
        if paddr % tdx.PAGE_SIZE or size <= 0 or size % tdx.PAGE_SIZE:
            raise ValueError(f"tdx_quirk_reset_paddr({paddr:#x}, {size:#x}): not whole pages")

    def pr_err(self, msg: str) -> None:
        self.warnings += 1
        self.last_warning = msg

    def WARN_ON_ONCE(self, cond: bool, msg: str = "WARN_ON_ONCE") -> bool:
        """Like the kernel's: the condition is returned every time, the warning is
        printed only the first time this call site fires (per CPU)."""
        if cond:
            caller = sys._getframe(1)
            site = (caller.f_code.co_filename, caller.f_lineno)
            if site not in self._warned:
                self._warned.add(site)
                self.pr_err(msg)
        return cond


#: the layout of a pool that names none (test doubles): every page at POOL_BASE
_ABOVE_GUEST: Final = PoolLayout(1 << 16)


def _unhooked(*args: object) -> None:
    """No hook: the primitives run free (stress)."""


def range_of(hpa: int) -> int:
    """2 MiB range index of a guest physical address (rcx page-size bits ignored)."""
    return (hpa - GUEST_BASE) // tdx.SZ_2M


def page_hpa(range_index: int, page: int) -> int:
    return GUEST_BASE + range_index * tdx.SZ_2M + page * tdx.PAGE_SIZE
