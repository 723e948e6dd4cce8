"""Variants the report tests load into CPU processes (module level, importable by file)."""

from __future__ import annotations

import os
import time

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.locked import Locked
from shmpamt.variants.mutants import RfcNoRecheck


class PutRaises(Locked):
    """locked, but put raises: the CPU crashes, the run must not call itself ok."""

    name = "put-raises"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        raise RuntimeError("put exploded")


class GetExits(Locked):
    """locked, but get ends the process quietly: a CPU that did not do its work."""

    name = "get-exits"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        raise SystemExit(0)


class Slip(RfcNoRecheck):
    """A user's copy of rfc with the recheck forgotten."""

    name = "user-slip"


class GetOsExit(Locked):
    """locked, but get ends the process with status 3 (a code the rig once used itself)."""

    name = "get-os-exit"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        os._exit(3)


class NeverRemoves(Locked):
    """locked, but put only counts down and never removes the PAMT: every later 0->1 get
    adds a present PAMT (add_present), and the run ends with a PAMT nobody uses
    (quiescent_mismatch). Deterministic, whatever the interleaving."""

    name = "never-removes"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        ref = k.tdx_get_pamt_refcount(page)
        k.spin_lock()
        k.atomic_set(ref, k.atomic_read(ref) - 1)
        k.spin_unlock()


class LeakyPut(Locked):
    """locked, but put never drops its reference: the range never goes back to idle."""

    name = "leaky-put"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        return None


class LeaksOnce(Locked):
    """locked, but the first put of each CPU process drops nothing (a one-off leak)."""

    name = "leaks-once"
    leaked = False

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        if not LeaksOnce.leaked:
            LeaksOnce.leaked = True
            return
        super().tdx_pamt_put(k, page)


class SlowRounds(Locked):
    """locked, but every put lingers 0.3 s: a round outlasts a short pause timeout."""

    name = "slow-rounds"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        time.sleep(0.3)
        super().tdx_pamt_put(k, page)


class PutKeepsLock(Locked):
    """locked, but the put that removes the PAMT returns holding pamt_lock: the next
    spin_lock, its own CPU's or another's, waits forever (explore: a deadlock)."""

    name = "put-keeps-lock"

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        refcount = k.tdx_get_pamt_refcount(page)
        k.spin_lock()
        users = k.atomic_read(refcount)
        if users == 1:
            k.tdh_phymem_pamt_remove(tdx.align_down_2m(page) | tdx.TDX_PS_2M, [])
            k.atomic_set(refcount, 0)
            return  # the slip: no spin_unlock
        k.atomic_set(refcount, users - 1)
        k.spin_unlock()
