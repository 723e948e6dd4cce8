"""A correct variant that lingers inside pamt_lock, so a test can kill a holder reliably."""

from __future__ import annotations

import time

from shmpamt.machine.kernel import Kernel
from shmpamt.variants.locked import Locked


class SleepyLocked(Locked):
    name = "sleepy-locked"
    description = "locked, but holds pamt_lock 20 ms longer in every get"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        k.spin_lock()
        time.sleep(0.02)
        k.spin_unlock()
        return super().tdx_pamt_get(k, page)
