"""The CPUs of a scenario that are interchangeable for DPOR's symmetry rule
(:mod:`shmpamt.schedulers.symmetry`): same rounds, and page picks that are the same
up to renaming each CPU's own pages.

Every CPU of explore runs the same code; what can tell two apart is the workload:
each CPU draws its pages from its own random stream (``workload_rng``), so with two
or more ranges their ranges differ. Two CPUs are in one orbit when their picks,
round by round, name the same range and repeat a page exactly where the other's
repeat. A CPU's private objects are its own pool partition (its ``alloc_page``
footprint): no other CPU frees into it before this CPU has handed the module a
page, which is a shared step.
"""

from __future__ import annotations

from shmpamt.config import ExploreConfig, Scenario
from shmpamt.engine.workload import Workload, pick_page
from shmpamt.explorer.board import OPS
from shmpamt.explorer.footprint import Footprints
from shmpamt.explorer.hook import workload_rng
from shmpamt.machine.kernel import range_of
from shmpamt.schedulers.symmetry import Symmetry

_ALLOC = OPS.index("alloc_page")


def page_pattern(scenario: Scenario, seed: int, cpu: int) -> tuple[tuple[int, int], ...]:
    """Round by round: (range, first round that picked the same page) of ``cpu``."""
    w = Workload.for_explore(scenario)
    rng = workload_rng(seed, cpu)
    first: dict[int, int] = {}
    out = []
    for r in range(scenario.rounds):
        hpa = pick_page(rng, cpu, scenario.cpus, w)
        out.append((range_of(hpa), first.setdefault(hpa, r)))
    return tuple(out)


def scenario_symmetry(scenario: Scenario, seed: int) -> Symmetry:
    """The orbits of the scenario's CPUs under workload seed ``seed``."""
    orbits: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for c in range(scenario.cpus):
        orbits.setdefault(page_pattern(scenario, seed, c), []).append(c)
    fp = Footprints(scenario.cpus, ranges=scenario.ranges)
    private = {c: fp.of(_ALLOC, 0, c).writes for c in range(scenario.cpus)}
    return Symmetry(tuple(tuple(o) for o in orbits.values()), private)


def symmetry_for(config: ExploreConfig) -> Symmetry | None:
    """DPOR's symmetry for a search, unless it is switched off (or not DPOR)."""
    if not config.symmetry or config.strategy != "dpor":
        return None
    return scenario_symmetry(config.scenario, config.seed)
