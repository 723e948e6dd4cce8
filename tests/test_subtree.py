"""A distributed proof's tasks on the toys: any slices, any order, every class once."""

from __future__ import annotations

import random
from collections import deque

import pytest
from test_dpor import TOYS, ClassKey, Run, Toy, class_key, explore, run_toy, write

from shmpamt.schedulers.base import Nondeterminism
from shmpamt.schedulers.dpor import DPOR, MAX_SUBTREE_DEPTH
from shmpamt.schedulers.subtree import SliceResult, run_slice


def prove(
    name: str, limits: random.Random, workers: int, depth: int | None
) -> tuple[list[ClassKey], int, int]:
    """The frontier protocol in one process: tasks drawn in a random order (as ``workers``
    workers would finish them), each with a random slice, some stopped from outside
    after a random number of executions; returns the classes the finished subtrees
    reported, their complete executions, and the tasks run."""
    toy = TOYS[name]()
    frontier: deque[tuple[int, ...]] = deque([()])
    keys: list[ClassKey] = []
    done: list[tuple[int, ...]] = []
    complete = 0
    tasks = 0
    while frontier:
        # Any of the first ``workers`` outstanding tasks may be the next to finish.
        k = limits.randrange(min(workers, len(frontier)))
        frontier.rotate(-k)
        prefix = frontier.popleft()
        dpor = DPOR(subtree=prefix, split_depth=depth)
        assert dpor.new_execution()
        stop_after = limits.choice([0, 0, 0, 1, 2, 4])  # 0: never stopped from outside
        ran = [0]

        def execute(d: DPOR = dpor, ran: list[int] = ran) -> Run:
            ran[0] += 1
            return run_toy(d, toy)

        def stop(ran: list[int] = ran, after: int = stop_after) -> bool:
            return 0 < after <= ran[0]

        res: SliceResult[Run] = run_slice(
            dpor, execute, limits.choice([1, 2, 3, 5, 100]), stop, lambda: limits.random() < 0.2
        )
        tasks += 1
        for path, part in res.finished.items():
            assert path[: len(prefix)] == prefix
            keys += [class_key(r.events, r.outcome, len(toy.threads)) for r in part.seen]
            complete += part.complete
            done.append(path)
        # Invariant: no two finished subtrees overlap, and none holds a handed-back one.
        for p in done:
            for q in [*done, *res.outstanding, *frontier]:
                assert p == q or q[: len(p)] != p, (p, q)
        frontier.extend(res.outstanding)
    return keys, complete, tasks


@pytest.mark.parametrize("name", sorted(TOYS))
@pytest.mark.parametrize("seed", range(8))
def test_subtree_tasks_partition_the_classes(name: str, seed: int) -> None:
    toy = TOYS[name]()
    whole = DPOR()
    whole_keys = [
        class_key(r.events, r.outcome, len(toy.threads))
        for r in explore(whole, toy)
        if r.outcome != "sleep-blocked"
    ]
    # Old-style tasks (one split state below the prefix) and fixed trees of 1 to 24 levels.
    depth = (None, 1, 2, 3, 6, MAX_SUBTREE_DEPTH, 4, 8)[seed]
    keys, complete, tasks = prove(name, random.Random(seed), workers=1 + seed % 4, depth=depth)
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
    # One split state below the prefix: the slice ends once the first child is done
    # (its two executions), and its siblings go back.
    assert list(res.finished) == [(0,)] and res.complete == 2
    assert res.outstanding == [(1,), (2,)]
    assert res.executions == 2 and res.dropped == 0


def test_a_task_stopped_from_outside_drops_the_piece_in_progress() -> None:
    toy = TOYS["writers-3"]()
    dpor = DPOR(subtree=())
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), None, lambda: True)
    # Stopped mid-child: the child goes back whole with its siblings, counted by no one.
    assert res.stopped and res.finished == {} and res.dropped == 1
    assert res.outstanding == [(0,), (1,), (2,)]


def test_an_idle_worker_gets_a_just_entered_piece_at_once() -> None:
    toy = TOYS["writers-3"]()
    dpor = DPOR(subtree=(), split_depth=1)
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), 100, should_split=lambda: True)
    # One split state: child (0,) is a piece of two executions. A worker is idle after
    # the first, so the task does not finish the piece: it goes back whole with its
    # siblings, its one execution dropped (its own task counts it).
    assert res.finished == {} and res.dropped == 1 and not res.stopped
    assert res.outstanding == [(0,), (1,), (2,)]
    # With nobody idle the same slice finishes the piece first.
    dpor = DPOR(subtree=(), split_depth=1)
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), 1)
    assert list(res.finished) == [(0,)] and res.dropped == 0


def test_a_piece_past_the_early_handoff_is_finished_even_for_an_idle_worker() -> None:
    toy = TOYS["writers-3"]()
    dpor = DPOR(subtree=(), split_depth=1)
    assert dpor.new_execution()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("shmpamt.schedulers.subtree.EARLY_HANDOFF", 0)
        res = run_slice(dpor, lambda: run_toy(dpor, toy), 100, should_split=lambda: True)
    # The piece has run one execution, more than EARLY_HANDOFF (0 here) allows to drop:
    # the task finishes it and ends the slice where the next alternative would start.
    assert list(res.finished) == [(0,)] and res.dropped == 0
    assert res.outstanding == [(1,), (2,)]


def test_a_fixed_tree_hands_back_every_untaken_alternative_and_wastes_nothing() -> None:
    toy = TOYS["writers-3"]()
    dpor = DPOR(subtree=(), split_depth=3)
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), 1)
    # Three writers of one variable: the first execution runs (0, 0, 0); the slice ends
    # where the next one would take the deepest state's next alternative, so the
    # untaken ones at every level go back and the one execution is counted.
    assert res.dropped == 0 and res.executions == 1
    assert list(res.finished) == [(0, 0)] and res.complete == 1
    assert res.outstanding == [(1,), (2,), (0, 1)]


def test_a_subtree_without_a_split_state_is_one_execution() -> None:
    toy = Toy([[write("x", 1), write("x", 2)]], {"x": 0})  # one thread: never two awake
    dpor = DPOR(subtree=())
    assert dpor.new_execution()
    res = run_slice(dpor, lambda: run_toy(dpor, toy), 1)
    assert list(res.finished) == [()] and res.outstanding == []
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
    with pytest.raises(ValueError, match="split_depth"):
        DPOR(split_depth=3)  # a fixed tree of split states is for subtree tasks only
    with pytest.raises(ValueError, match="split_depth"):
        DPOR(subtree=(0, 0), split_depth=1)
    with pytest.raises(ValueError, match="split_depth"):
        DPOR(subtree=(), split_depth=MAX_SUBTREE_DEPTH + 1)
