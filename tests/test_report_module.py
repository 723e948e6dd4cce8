"""Every JSON report names the module semantics its run was judged against, in the
header's words: explore, stress, replay and campaign."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shmpamt.api as api
from shmpamt.machine.kernel import module_semantics


def _run(args: list[str], out: Path, env_steps: str | None = None) -> tuple[dict[str, object], str]:
    env = dict(os.environ)
    if env_steps is not None:
        env["SHMPAMT_SEAMCALL_STEPS"] = env_steps
    p = subprocess.run(
        [sys.executable, "-m", "shmpamt", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert p.returncode in (0, 1), p.stdout + p.stderr
    return json.loads(out.read_text()), " ".join(p.stdout.split())


@pytest.mark.parametrize("steps", ["2", "1"])
def test_explore_and_stress_json_name_the_module_as_the_header_does(
    tmp_path: Path, steps: str
) -> None:
    words = module_semantics(two_phase=steps == "2")
    runs = {
        "explore": ["explore", "--variant", "locked", "--executions", "5", "--db", "off"],
        "stress": ["stress", "--variant", "locked", "--cpus", "2", "--iterations", "5"],
    }
    for name, args in runs.items():
        data, stdout = _run(args, tmp_path / f"{name}.json", steps)
        # Invariant: the JSON and the header name the same semantics, the run's own.
        assert data["module"] == words, name
        assert words in stdout, (name, stdout[:400])


def test_replay_and_campaign_json_name_the_module(tmp_path: Path) -> None:
    found = api.explore("rfc-norecheck", executions=300, seed=1, first=True, minimize=False)
    assert found.findings, found.to_dict()
    data, stdout = _run(["replay", found.findings[0].schedule], tmp_path / "r.json")
    assert data["module"] == module_semantics() and module_semantics() in stdout
    camp = ["campaign", "--variant", "locked", "--strategy", "random", "--seeds", "1"]
    camp += ["--executions", "5", "--workers", "1", "--db", "off"]
    data, stdout = _run(camp, tmp_path / "c.json")
    assert data["module"] == module_semantics() and module_semantics() in stdout
