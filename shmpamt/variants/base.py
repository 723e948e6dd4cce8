"""The interface every get/put protocol implements, built-in or the user's own."""

from __future__ import annotations

from typing import ClassVar

from shmpamt.machine.kernel import Kernel


class PamtVariant:
    """A ``tdx_pamt_get``/``tdx_pamt_put`` pair written against :class:`Kernel`.

    Subclass it, set ``name``/``description``/``initial_refcount``, and write
    the two methods step for step like the kernel code they model. Instances
    hold no state: everything shared lives behind ``k``.
    """

    #: short name used by ``--variant`` and in reports
    name: ClassVar[str] = ""
    #: one line for ``shmpamt variants``
    description: ClassVar[str] = ""
    #: value of every refcount while nobody uses its range
    initial_refcount: ClassVar[int] = 0
    #: where the modelled code comes from (for docs and reports)
    source: ClassVar[str] = ""

    def tdx_pamt_get(self, k: Kernel, page: int) -> int:
        """Make the range of ``page`` safe to use; 0 or a negative errno."""
        raise NotImplementedError

    def tdx_pamt_put(self, k: Kernel, page: int) -> None:
        """Drop the claim a successful get took."""
        raise NotImplementedError
