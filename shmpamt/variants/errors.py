"""The one exception a variant spec that cannot be used raises (here to avoid import cycles)."""

from __future__ import annotations


class VariantLoadError(Exception):
    """A variant spec that cannot be used; the message is one line naming the cause."""
