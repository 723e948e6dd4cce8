"""Variants with a PAMT page cache that the cache tests load into CPU processes."""

from __future__ import annotations

from shmpamt.machine.kernel import Kernel
from shmpamt.variants.base import PamtCache
from shmpamt.variants.v6 import V6


class CacheBypass(V6):
    """v6 whose get ignores the cache it is given and allocates (one slip)."""

    name = "v6-cache-bypass"

    def tdx_pamt_get(self, k: Kernel, page: int, cache: PamtCache | None = None) -> int:
        return super().tdx_pamt_get(k, page, None)
