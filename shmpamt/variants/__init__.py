"""The get/put protocols under test, and how a user brings their own.

``base.PamtVariant`` is the interface; ``registry.load_variant`` resolves a
``--variant`` spec (built-in name, ``file.py:Class`` or ``package.module:Class``).
"""

from __future__ import annotations

from shmpamt.variants.base import PamtVariant
from shmpamt.variants.common import tdx_alloc_pamt_pages, tdx_free_pamt_pages

__all__ = ["PamtVariant", "tdx_alloc_pamt_pages", "tdx_free_pamt_pages"]
