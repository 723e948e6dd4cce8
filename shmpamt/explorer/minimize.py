"""Shrink a failing schedule to the few steps and switches that make the bug happen.

A recorded failure is hundreds of steps of mostly irrelevant interleaving. This
is delta debugging (Zeller and Hildebrandt, TSE 2002) over the schedule's
run-length blocks and its injected faults: each candidate is a smaller
schedule, checked by replaying it (``still_fails``); the first that still
fails becomes the new best and the search starts over from it. Candidates,
cheapest and most effective first:

0. drop one injected fault (fewer faults is smaller than any number of steps:
   a failure that needs no fault is a happy-path bug);
1. truncate the tail (the violation ends the execution; past the recorded
   steps, replay continues without preemption, so a shorter prefix is still
   one well-defined execution);
2. drop runs of whole blocks, halving the run length down to single blocks;
3. shorten single blocks;
4. merge two blocks of one CPU by moving one next to the other (two context
   switches fewer);
5. move a block boundary later (the next block's first steps go to this one).

A candidate is only tried if it is strictly smaller than the best so far in the
order (faults, steps, context switches, preemptions, earlier switches), so the search
always terminates; it also stops after ``max_checks`` calls of ``still_fails``.
Everything is deterministic: the same inputs give the same result. Candidates
may be infeasible (a CPU named that cannot run); ``still_fails`` returns False
for those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from shmpamt.records.schedule_string import Schedule

Blocks = list[tuple[int, int]]


def size_key(s: Schedule) -> tuple[int, int, int, int, int]:
    """The order minimisation descends: fewer faults, steps, switches, preemptions;
    later switches."""
    switch_positions = sum(i for i in range(1, len(s.steps)) if s.steps[i] != s.steps[i - 1])
    return (len(s.faults), len(s.steps), s.context_switches(), s.preemptions(), -switch_positions)


class _ChecksSpent(Exception):
    pass


class _Search:
    def __init__(self, start: Schedule, still_fails: Callable[[Schedule], bool], max_checks: int):
        self.best = start
        self.still_fails = still_fails
        self.max_checks = max_checks
        self.checks = 0
        self._seen: set[Schedule] = {start}

    def attempt(self, steps: tuple[int, ...] | Schedule) -> bool:
        """Check one candidate (steps of the best, or a whole schedule); True (and adopt
        it) if it is smaller and still fails."""
        cand = steps if isinstance(steps, Schedule) else self.best.with_steps(steps)
        if cand in self._seen:
            return False
        self._seen.add(cand)
        if size_key(cand) >= size_key(self.best):
            return False
        if self.checks >= self.max_checks:
            raise _ChecksSpent
        self.checks += 1
        if self.still_fails(cand):
            self.best = cand
            return True
        return False

    # -- candidate generators; each yields step tuples for the current best -----

    def fault_drops(self) -> Iterator[Schedule]:
        faults = self.best.faults
        for i in range(len(faults)):
            yield self.best.with_faults(faults[:i] + faults[i + 1 :])

    def truncations(self) -> Iterator[tuple[int, ...]]:
        steps = self.best.steps
        cut = len(steps) // 2
        while cut >= 1:
            yield steps[: len(steps) - cut]
            cut //= 2

    def block_drops(self) -> Iterator[tuple[int, ...]]:
        blocks = list(self.best.blocks())
        size = len(blocks) // 2
        while size >= 1:
            for start in range(0, len(blocks), size):
                yield _flat(blocks[:start] + blocks[start + size :])
            size //= 2

    def block_shortenings(self) -> Iterator[tuple[int, ...]]:
        blocks = list(self.best.blocks())
        for i, (cpu, n) in enumerate(blocks):
            keep = n // 2
            while keep < n:
                yield _flat([*blocks[:i], (cpu, keep), *blocks[i + 1 :]])
                keep = keep + max((n - keep) // 2, 1)

    def merges(self) -> Iterator[tuple[int, ...]]:
        blocks = list(self.best.blocks())
        for j in range(len(blocks)):
            for i in range(j - 1, -1, -1):
                if blocks[i][0] != blocks[j][0]:
                    continue
                # block j moves up to join block i, or block i moves down to join j
                yield _flat([*blocks[: i + 1], blocks[j], *blocks[i + 1 : j], *blocks[j + 1 :]])
                yield _flat([*blocks[:i], *blocks[i + 1 : j], blocks[i], *blocks[j:]])

    def boundary_moves(self) -> Iterator[tuple[int, ...]]:
        blocks = list(self.best.blocks())
        for i in range(len(blocks) - 1):
            (a, n), (b, m) = blocks[i], blocks[i + 1]
            k = m // 2
            while k >= 1:
                yield _flat([*blocks[:i], (a, n + k), (b, m - k), *blocks[i + 2 :]])
                k //= 2

    def run(self) -> Schedule:
        passes: tuple[Callable[[], Iterator[tuple[int, ...] | Schedule]], ...] = (
            self.fault_drops,
            self.truncations,
            self.block_drops,
            self.block_shortenings,
            self.merges,
            self.boundary_moves,
        )
        try:
            improved = True
            while improved:
                improved = False
                for make in passes:
                    # Restart from the cheapest pass as soon as anything shrinks.
                    if any(self.attempt(c) for c in make()):
                        improved = True
                        break
        except _ChecksSpent:
            pass
        return self.best


def _flat(blocks: Blocks) -> tuple[int, ...]:
    return Schedule.steps_from_blocks(blocks)


def minimize(
    schedule: Schedule, still_fails: Callable[[Schedule], bool], max_checks: int
) -> Schedule:
    """The smallest failing schedule found from ``schedule`` within ``max_checks`` checks.

    ``schedule`` is assumed to fail (it is not re-checked) and is returned as
    is if nothing smaller fails. ``still_fails`` must be deterministic and must
    return False, not raise, for an infeasible candidate.
    """
    if max_checks < 0:
        raise ValueError("max_checks must be >= 0")
    return _Search(schedule, still_fails, max_checks).run()
