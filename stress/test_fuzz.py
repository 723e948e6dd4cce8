"""Fuzz every built-in variant: PCT over a seed range split across xdist workers, and
hypothesis-generated interleavings that shrink to a minimal failing one.

Run from the repo root: ``pytest -n auto stress/``. Every case asserts the
generic invariant only ("no violation"), so the buggy built-in variants
(rfc, kai, v4 and the rfc mutants) are *expected* to fail here: a failure's
message is the finding, with its ``shmpamt replay ...`` command. Every test in
this file is slow by design (``-m "not slow"`` skips them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpamt.config import Scenario
from shmpamt.explorer.session import Session
from shmpamt.pytest_plugin import ShmpamtRig, ShmpamtSettings
from shmpamt.records.violations import describe
from shmpamt.schedulers.base import BaseScheduler, default_choice
from shmpamt.variants.registry import BUILTIN

pytestmark = pytest.mark.slow

#: hypothesis examples per variant; each is one execution of a few dozen steps
MAX_EXAMPLES = 150
#: CPU choices in one example: the scenario's executions are 50-110 steps long
MAX_CHOICES = 120


def test_pct_seed(shmpamt: ShmpamtRig, fuzz_case: tuple[str, int, int]) -> None:
    variant, seed, depth = fuzz_case
    result = shmpamt.explore(variant, strategy="pct", seed=seed, depth=depth)
    # Invariant: no execution of any variant produces a violation.
    assert result.ok, result.summary()


class FollowChoices(BaseScheduler):
    """Takes the i-th list entry modulo the runnable set at step i, then the default.

    Any list of integers is a valid schedule for any variant, so hypothesis can
    shrink freely: shorter lists and smaller numbers mean fewer preemptions.
    """

    name = "choices"

    def __init__(self, choices: Sequence[int], workload_seed: int) -> None:
        super().__init__(workload_seed)
        self.choices = tuple(choices)

    def _choose(self, runnable: Sequence[int], current: int | None) -> int:
        i = len(self.steps)
        if i < len(self.choices):
            return sorted(runnable)[self.choices[i] % len(runnable)]
        return default_choice(runnable, current)

    def coverage(self) -> str:
        return f"{self.executions} executions following {len(self.choices)} given choices"


@pytest.fixture(scope="module", params=list(BUILTIN))
def session(request: pytest.FixtureRequest) -> Iterator[Session]:
    """One persistent system per variant: each hypothesis example costs one execution."""
    with Session(Scenario(str(request.param), cpus=2, rounds=2, ranges=1)) as s:
        yield s


@settings(deadline=None, max_examples=MAX_EXAMPLES, database=None, derandomize=True)
@given(choices=st.lists(st.integers(min_value=0, max_value=7), max_size=MAX_CHOICES))
def test_interleaving(
    session: Session, shmpamt_settings: ShmpamtSettings, choices: list[int]
) -> None:
    # The interleavings are derandomized (same examples every run); the workload
    # (which pages each CPU takes) follows the run's --shmpamt-seed.
    sched = FollowChoices(choices, shmpamt_settings.seed)
    assert sched.new_execution()
    ex = session.execute(sched)
    # Past the list both this scheduler and replay take default_choice: the prefix suffices.
    schedule = session.scenario.schedule(ex.workload_seed, tuple(ex.steps[: len(choices)]))
    # Invariant: no interleaving of any variant produces a violation.
    found = "; ".join(describe(v) for v in ex.violations)
    clean = not ex.failed
    assert clean, f"{session.variant_name}: {found}\n  replay: {schedule.replay_command()}"
