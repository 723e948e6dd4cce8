"""A distributed proof's tasks on the toys: any slices, any order, every class once."""

from __future__ import annotations

import random
from collections import deque

import pytest
from test_dpor import TOYS, ClassKey, Run, Toy, class_key, explore, run_toy, write

from shmpamt.schedulers.base import Nondeterminism
from shmpamt.schedulers.dpor import DPOR, MAX_SUBTREE_DEPTH
from shmpamt.schedulers.subtree import WHOLE, SliceResult, run_slice


def prove(name: str, limits: random.Random, workers: int) -> tuple[list[ClassKey], int, int]:
    """The frontier protocol in one process: tasks drawn in a random order (as ``workers``
    workers would finish them), each with a random slice; returns the classes the
    finished children reported, their complete executions, and the tasks run."""
    toy = TOYS[name]()
    frontier: deque[tuple[int, ...]] = deque([()])
    keys: list[ClassKey] = []
    complete = 0
    tasks = 0
    while frontier:
        # Any of the first ``workers`` outstanding tasks may be the next to finish.
        k = limits.randrange(min(workers, len(frontier)))
        frontier.rotate(-k)
        prefix = frontier.popleft()
        dpor = DPOR(subtree=prefix)
        assert dpor.new_execution()
        res: SliceResult[Run] = run_slice(
            dpor,
            lambda d=dpor: run_toy(d, toy),
            limits.choice([1, 2, 3, 5, 100]),  # type: ignore[misc]
        )
        tasks += 1
        for part in res.finished.values():
            keys += [class_key(r.events, r.outcome, len(toy.threads)) for r in part.seen]
            complete += part.complete
        frontier.extend(res.outstanding)
    return keys, complete, tasks


@pytest.mark.parametrize("name", sorted(TOYS))
@pytest.mark.parametrize("seed", range(6))
def test_subtree_tasks_partition_the_classes(name: str, seed: int) -> None:
    toy = TOYS[name]()
    whole = DPOR()
    whole_keys = [
        class_key(r.events, r.outcome, len(toy.threads))
        for r in explore(whole, toy)
        if r.outcome != "sleep-blocked"
    ]
    keys, complete, tasks = prove(name, random.Random(seed), workers=1 + seed % 4)
    # Invariant: every class is counted by exactly one task, and the counts add up to
    # the unsplit search's, whatever the slices and the order the tasks ran in.
    assert len(keys) == len(set(keys)) == complete
    assert set(keys) == set(whole_keys)
    assert complete == whole.complete_executions
    assert tasks >= 1


def test_a_slice_of_one_execution_splits_into_the_children() -> None:
    toy = TOYS["writers-3"]()
    dpor = DPOR(subtree=())
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), 1)
    # The first child was in progress: it is handed back, with its siblings, counted by no one.
    assert res.finished == {}
    assert res.outstanding == [(0,), (1,), (2,)]
    assert res.executions == 1


def test_a_subtree_without_a_split_state_is_one_execution() -> None:
    toy = Toy([[write("x", 1), write("x", 2)]], {"x": 0})  # one thread: never two awake
    dpor = DPOR(subtree=())
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), 1)
    assert list(res.finished) == [WHOLE] and res.outstanding == []
    assert res.complete == 1


def test_a_prefix_past_the_tree_is_nondeterminism() -> None:
    toy = TOYS["writers-3"]()
    dpor = DPOR(subtree=(7,))
    assert dpor.new_execution()
    with pytest.raises(Nondeterminism, match="takes position 7"):
        run_toy(dpor, toy)


def test_subtree_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="not both"):
        DPOR(shard=(0, 2), subtree=())
    with pytest.raises(ValueError, match="at most"):
        DPOR(subtree=(0,) * (MAX_SUBTREE_DEPTH + 1))
    with pytest.raises(ValueError, match=">= 0"):
        DPOR(subtree=(-1,))
