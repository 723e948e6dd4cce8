"""Symmetry for DPOR: CPUs that run the same code over the same pages are interchangeable
until they first touch shared state, so only one of them need be tried first.

The rule (:meth:`Symmetry.pruned`): at a state, among the enabled CPUs of one
*orbit* (CPUs whose workload is the same up to renaming CPU-own objects: their
page picks, their pool partition) that have so far taken only *private* steps
(steps on objects no other CPU touches before this CPU's first shared step: its
own pool partition), only the lowest is a choice; the others are pruned.

Why it is sound. Let i < j be such CPUs at state s. Their private steps commute
with every step of every CPU, and a private history is fixed by the workload
(first-fit allocation from the CPU's own partition), so letting the one behind
take its private steps reaches a state s' in which i and j have the same local
state up to renaming, and the global state is invariant under swapping i and j
(neither has touched anything shared). An execution from s that starts with j
is therefore equivalent (Mazurkiewicz, moving private steps) to one through s'
that starts with j's first shared step, whose image under the swap starts with
i's, and that one is equivalent to an execution from s starting with i. Violation
kinds are invariant under renaming CPUs and their pages, so the kinds of every
class are found in the subtree of i. With sleep sets the same holds: if i sleeps
at s, its executions are covered elsewhere, and so are j's images of them; the
pruned CPU is never in ``done``, so it never enters a later sibling's sleep set.
Races that would add j at s add i (:meth:`Symmetry.representative`). The choice of
i is canonical (the lowest), so coverage always rests on an explored subtree.

What it assumes: the variant's code does not depend on the CPU number (the
built-ins' does not; a variant that branches on ``k.cpu`` needs ``--no-symmetry``).

Injected faults (outcome branches, :mod:`~shmpamt.schedulers.dpor`): a CPU whose
step was injected is treated as one that took a shared step, so i and j above
have no injection behind them and the same local state up to renaming. The
image under the swap of an execution starting with j has the same outcomes,
moved to i's steps, and as many injections; i's subtree explores every outcome
of every step of i within the bound, so the image is in it. The fault kinds and
the bound are the same for every CPU, so nothing else tells the two apart.

Emerson and Sistla, "Symmetry and model checking" (FMSD 1996) for the orbit
argument; the combination with sleep sets follows the "interchangeable until
first visible interaction" idea of thread-symmetry reductions in stateless
checkers (e.g. SPORE, PLDI 2024, in a much more general form).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shmpamt.schedulers.base import Access


@dataclass(frozen=True)
class Symmetry:
    """Which CPUs are interchangeable, and which objects are each CPU's own."""

    #: each orbit's CPUs (an orbit of one CPU reduces nothing)
    orbits: tuple[tuple[int, ...], ...]
    #: objects only this CPU touches until its first shared step
    private: Mapping[int, frozenset[int]]
    _orbit_of: dict[int, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: dict[int, tuple[int, ...]] = {}
        for orbit in self.orbits:
            ordered = tuple(sorted(orbit))
            for c in ordered:
                # Invariant: orbits partition the CPUs they name.
                if c in seen:
                    raise ValueError(f"cpu {c} is in two orbits: {self.orbits}")
                seen[c] = ordered
        object.__setattr__(self, "_orbit_of", seen)

    @property
    def reduces(self) -> bool:
        """Whether any orbit has two CPUs (else the rule never prunes)."""
        return any(len(o) > 1 for o in self.orbits)

    def is_private(self, cpu: int, access: Access) -> bool:
        """A step of ``cpu`` that touches only its own objects."""
        own = self.private.get(cpu, frozenset())
        return access.writes <= own and access.reads <= own

    def pruned(self, enabled: Iterable[int], shared: int) -> frozenset[int]:
        """The enabled CPUs not to try first here. ``shared``: bit c set if CPU c has
        taken a shared step on the path so far."""
        reps: dict[tuple[int, ...], int] = {}
        out: set[int] = set()
        for c in sorted(enabled):
            if shared >> c & 1:
                continue
            orbit = self._orbit_of.get(c)
            if orbit is None or len(orbit) < 2:
                continue
            if orbit in reps:
                out.add(c)
            else:
                reps[orbit] = c
        return frozenset(out)

    def representative(self, cpu: int, enabled: Sequence[int], shared: int) -> int:
        """The CPU tried in place of ``cpu`` here (``cpu`` itself unless pruned)."""
        if shared >> cpu & 1:
            return cpu
        orbit = self._orbit_of.get(cpu, (cpu,))
        for c in orbit:  # sorted: the lowest enabled, not yet shared
            if c in enabled and not shared >> c & 1:
                return c
        return cpu

    def describe(self) -> str:
        """For the claim: which CPUs were treated as interchangeable."""
        big = [o for o in self.orbits if len(o) > 1]
        return "symmetry over CPUs " + "; ".join("{" + ",".join(map(str, o)) + "}" for o in big)
