"""v6, but a CPU whose get takes the fast path (another CPU installed the PAMT first)
dies on the spot: every subtree with such an interleaving crashes, every time."""

from __future__ import annotations

import os

from shmpamt import tdx
from shmpamt.machine.kernel import Kernel
from shmpamt.variants.v6 import V6


class CrashOnFastPath(V6):
    name = "crash-on-fast-path"
    description = "v6 whose CPU process exits when a get finds the refcount non-zero"

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        if k.atomic_read(k.tdx_get_pamt_refcount(tdx.align_down_2m(page))):
            os._exit(3)
        return super().tdx_pamt_get(k, page)
