"""The campaign planner and merge, without Dask: shards are stable, the merge does not
depend on completion order, and the best schedule is the one with the fewest steps."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from shmpamt.campaign.matrix import Plan, Shard, ShardOutcome, add_regressions, merge_shards
from shmpamt.config import ExploreConfig, StressConfig
from shmpamt.errors import UsageError


def test_matrix_is_cut_into_one_shard_per_variant_strategy_seed() -> None:
    plan = Plan(("rfc", "kai"), ("pct", "stress"), seed=10, seeds=3, executions=7)
    shards = plan.shards()
    assert len(shards) == 12 and [s.index for s in shards] == list(range(12))
    assert shards[0].id == "rfc/pct/seed10" and shards[-1].id == "kai/stress/seed12"
    assert isinstance(shards[0].config(), ExploreConfig)
    stress = shards[3].config()
    assert isinstance(stress, StressConfig) and stress.iterations == 7
    assert Plan(("rfc",)).budget == 5.0  # the default budget per shard


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variants": ()}, "variants"),
        ({"strategies": ("nope",)}, "strategy"),
        ({"seeds": 0}, "seeds"),
        ({"budget": 1.0, "executions": 3}, "budget"),
        ({"cpus": 99}, "cpus"),
        ({"ignore": frozenset({"nope"})}, "ignore"),
    ],
)
def test_bad_matrix_names_its_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(UsageError) as e:
        Plan.from_mapping({"variants": ("rfc",), **kwargs})
    assert e.value.field == field


def test_toml_matrix_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('variants = ["rfc", "v6"]\nstrategies = ["random"]\nseeds = 2\nbudget = 1.5\n')
    plan = Plan.from_toml(f, seeds=3)
    assert (plan.variants, plan.strategies, plan.seeds, plan.budget) == (
        ("rfc", "v6"),
        ("random",),
        3,
        1.5,
    )
    f.write_text("variantz = []\n")
    with pytest.raises(UsageError, match="unknown key 'variantz'"):
        Plan.from_toml(f)


def _outcome(shard: Shard, kinds: dict[str, tuple[int, str, int]], where: str) -> ShardOutcome:
    result = {
        "operations": 10,
        "incidents": [],
        "ignored": [],
        "violations": {k: {"count": n} for k, (n, _, _) in kinds.items()},
        "schedules": [
            {"kind": k, "schedule": s, "steps": st, "strategy": shard.strategy}
            for k, (_, s, st) in kinds.items()
        ],
    }
    return ShardOutcome(shard, result, host="h", worker=where)


def test_merge_is_order_independent_and_keeps_the_shortest_schedule() -> None:
    shards = Plan(("rfc",), ("pct",), seeds=3, executions=5).shards()
    outs = [
        _outcome(shards[0], {"add_present": (3, "s1:rfc:c2.r2.g1.p2.w0:0x9", 40)}, "w0"),
        _outcome(shards[1], {"add_present": (1, "s1:rfc:c2.r2.g1.p2.w1:0x2", 30)}, "w1"),
        _outcome(shards[2], {"remove_absent": (2, "s1:rfc:c2.r2.g1.p2.w2:1", 50)}, "w0"),
    ]
    first = merge_shards(outs)["rfc"]
    for _ in range(5):
        random.shuffle(outs)
        assert merge_shards(outs)["rfc"].to_dict() == first.to_dict()
    best = first.kinds["add_present"].best
    assert best is not None and (best.steps, best.shard, best.where) == (30, shards[1].id, "h:w1")
    assert first.verdict()["counts"] == {"add_present": 4, "remove_absent": 2}
    assert first.operations == 30 and first.shards == 3


def test_retries_errors_and_regressions_are_reported() -> None:
    (shard,) = Plan(("kai",), seeds=1, executions=5).shards()
    v = merge_shards([ShardOutcome(shard, None, attempts=3, error="CpuCrashed: cpu 1 died")])["kai"]
    assert v.errors == [f"{shard.id}: CpuCrashed: cpu 1 died"]
    assert v.retried and "3 times" in v.retried[0]
    add_regressions(v, 2, [("use_without_pamt", "s1:kai:c2.r2.g1.p2.w0:1", 12, "pct")])
    assert v.regressions == (2, 1) and v.failing == ["use_without_pamt"]


def test_explore_shards_carry_the_plan_s_faults_and_bad_ones_are_refused() -> None:
    plan = Plan(("v6",), ("random",), faults="remove.busy=0.5", max_faults=2, seeds=1)
    (shard,) = plan.shards()
    config = shard.config()
    assert isinstance(config, ExploreConfig)
    assert (config.faults, config.max_faults) == ("remove.busy=0.5", 2)
    assert config.fault_probabilities == {"remove.busy": 0.5}
    with pytest.raises(UsageError, match="outside"):
        Plan(("v6",), ("random",), faults="add.busy=3")
    with pytest.raises(UsageError, match="max_faults"):
        Plan(("v6",), ("random",), max_faults=9)
