"""What a CPU does in a round, KVM-like: pick a 4 KiB page, get, AUG, hold, RECLAIM, put.

The order is KVM's: map = get, then AUG, and put if AUG failed; unmap = RECLAIM,
then put. A variant whose get takes a PAMT page cache (v6's ``tdx_pamt_cache``)
gets one per CPU, topped up for one get before every round as KVM tops up a
vCPU's cache before taking the MMU lock, and freed when the CPU stops (as
``tdx_vcpu_free`` does). Such a get must never fail for lack of memory:
``cache_get_enomem`` says it did.

Each CPU uses its own page slots within every range (slot j belongs to CPU
j % cpus) so two CPUs never AUG the same 4 KiB page: sharing happens at the
2 MiB level, where the refcount protocol lives.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel, page_hpa, range_of
from shmpamt.machine.violation_log import ViolationLog
from shmpamt.module.faults import page_kept_by_injection
from shmpamt.records.violations import (
    CACHE_GET_ENOMEM,
    GET_FAILED,
    GET_FAILED_TOPUP,
    PUT_FAILED,
)
from shmpamt.variants.base import CachedPamtVariant, PamtCache, PamtVariant

if TYPE_CHECKING:  # config imports every strategy: a CPU process needs none of them
    from shmpamt.config import Scenario, StressConfig

#: gets a round's top-up covers: one guest page is mapped per round
TOPUP_GETS: Final = 1


@dataclass(frozen=True)
class Workload:
    """What each CPU does; picklable so it can cross the spawn boundary."""

    ranges: int = 2
    pages_per_range: int = 8
    hot: float = 0.7  # probability that a pick goes to range 0, the hot range
    hold_us: int = 50  # a held page is kept 0..hold_us microseconds
    iterations: int = 0  # per CPU; 0 = until told to stop
    chaos: float = 0.0  # probability of a random delay/yield at every primitive
    chaos_us: int = 100  # longest uniform chaos delay; shortest targeted one
    chaos_mode: str = "targeted"  # or "uniform" (see shmpamt/machine/chaos.py)
    seamcall_timeout: float = 10.0  # a module that does not answer within this is hung
    use_page: bool = True  # AUG/RECLAIM the page between get and put (False: protocol only)

    @classmethod
    def for_stress(cls, c: StressConfig) -> Workload:
        return cls(
            ranges=c.ranges,
            pages_per_range=c.pages,
            hot=c.hot,
            hold_us=c.hold_us,
            iterations=c.iterations or 0,
            chaos=c.chaos,
            chaos_mode=c.chaos_mode,
            seamcall_timeout=c.seamcall_timeout,
            use_page=c.use_page,
        )

    @classmethod
    def for_explore(cls, s: Scenario) -> Workload:
        return cls(ranges=s.ranges, pages_per_range=s.pages, hold_us=0)


def pick_page(rng: random.Random, cpu: int, cpus: int, w: Workload) -> int:
    """Physical address of a page this CPU may use, skewed toward range 0."""
    r = 0 if w.ranges == 1 or rng.random() < w.hot else rng.randrange(1, w.ranges)
    slots = range(cpu, w.pages_per_range, cpus)
    return page_hpa(r, rng.choice(slots))


def one_round(
    k: Kernel,
    variant: PamtVariant,
    hpa: int,
    hold: float,
    log: ViolationLog,
    use_page: bool = True,
    held: set[int] | None = None,
    cache: PamtCache | None = None,
) -> bool:
    """(top-up,) get, AUG, hold, RECLAIM, put. Returns False if the get (or top-up) failed.

    ``cache``: the CPU's PAMT page cache, for a :class:`CachedPamtVariant`.
    A page whose RECLAIM injection kept refusing stays assigned: the CPU keeps it
    (and its reference) in ``held`` and skips the put, which would otherwise make
    a correct variant's PAMT.REMOVE look like ``remove_while_in_use``.
    """
    before = k.injected
    if isinstance(variant, CachedPamtVariant) and cache is not None:
        # KVM's fault path: fill the cache first; if that fails, no get is made.
        err = variant.tdx_topup_pamt_cache(k, cache, TOPUP_GETS)
        if err:
            judge_failed_get(k, log, hpa, err, before, GET_FAILED_TOPUP)
            return False
        before = k.injected
        err = variant.tdx_pamt_get(k, hpa, cache)
        # Invariant: a get whose cache holds a pair for it never lacks memory.
        if err == -tdx.ENOMEM:
            log.record(CACHE_GET_ENOMEM, cpu=k.cpu, range_=range_of(hpa), a=err)
            return False
    else:
        err = variant.tdx_pamt_get(k, hpa)
    if err:
        judge_failed_get(k, log, hpa, err, before)
        return False
    assigned = use_page and _retry_busy(k, k.tdh_mem_page_aug, hpa) == tdx.TDX_SUCCESS
    if hold > 0:
        time.sleep(hold)
    if assigned:
        err = _retry_busy(k, k.tdh_phymem_page_reclaim, hpa)
        if page_kept_by_injection(err):
            if held is not None:
                held.add(hpa)
            return True
    put_and_judge(k, variant, hpa, log)
    return True


def put_and_judge(k: Kernel, variant: PamtVariant, hpa: int, log: ViolationLog) -> None:
    """The put, and its requirement: the free path never fails. A PAMT.REMOVE in it
    that failed with no fault injected (a BUSY from another CPU's call holding the
    entry, say) is ``put_failed``, whatever the variant made of it."""
    before = k.removes_failed
    variant.tdx_pamt_put(k, hpa)
    if k.removes_failed > before:
        status = k.last_remove_failure  # a u64 in the record's signed 64-bit word
        a = status - (1 << 64) if status >= 1 << 63 else status
        log.record(PUT_FAILED, cpu=k.cpu, range_=range_of(hpa), a=a)


def judge_failed_get(
    k: Kernel, log: ViolationLog, hpa: int, err: int, injected: int, what: int = 0
) -> None:
    """A failed get is fine only if a fault was injected into it (``k.injected`` moved
    past ``injected``, its value before the get); otherwise it is ``get_failed``
    (``what``: ``GET_FAILED_TOPUP`` when the cache top-up before it failed)."""
    if k.injected == injected:
        log.record(GET_FAILED, cpu=k.cpu, range_=range_of(hpa), a=err, c=what)


def new_cache(variant: PamtVariant) -> PamtCache | None:
    """A CPU's PAMT page cache if the variant's get takes one (``tdx_init_pamt_cache``)."""
    return variant.new_pamt_cache() if isinstance(variant, CachedPamtVariant) else None


def free_cache(k: Kernel, variant: PamtVariant, cache: PamtCache | None) -> None:
    """The CPU stops (or pauses): its cached pages go back (``tdx_free_pamt_cache``)."""
    if isinstance(variant, CachedPamtVariant) and cache is not None:
        variant.tdx_free_pamt_cache(k, cache)


#: contention BUSYs an AUG/RECLAIM retries before the CPU gives the call up (the
#: entry's holder must run to release it; in explore a longer spin is only more steps)
CONTENDED_RETRIES: Final = 2


def _retry_busy(k: Kernel, leaf_call: Callable[[int], int], hpa: int) -> int:
    """KVM retries AUG/RECLAIM while the module says BUSY: injected BUSYs up to 1000
    times, BUSYs from another CPU's call holding the entry ``CONTENDED_RETRIES`` times."""
    err = tdx.TDX_SUCCESS
    contended = k.contended
    for _ in range(1000):
        err = int(leaf_call(hpa))
        if tdx.status_class(err) != tdx.TDX_OPERAND_BUSY:
            return err
        if k.contended - contended > CONTENDED_RETRIES:
            return err
    return err
