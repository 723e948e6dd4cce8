"""Fault matrix, short: a few CLI runs, each hit by one fault (issue 17, item 6).

The long version is ``stress/test_fault_matrix.py``; both use ``tests/fault_matrix.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_matrix import Outcome, Trial, _judge, run_trial

TRIALS = [
    Trial("stress", "locked", "kill_cpu", 1, 1.0),
    Trial("stress", "v6", "kill_daemon", 2, 1.0),
    Trial("stress", "locked", "kill_runner", 3, 1.0),
    Trial("stress", "v6", "stop_cpu", 4, 0.5, stop_for=2.0),
    Trial("stress", "locked", "stop_daemon", 5, 0.5, stop_for=2.0),
    Trial("stress", "v6", "sigint_runner", 6, 1.0),
    # v6, not locked: locked's proof can end before the signal (exit 0, nothing to hit)
    Trial("explore", "v6", "sigterm_runner", 7, 1.0),
    Trial("stress", "rfc", "kill_cpu", 8, 1.5),
    # issue 17 item 5: explore CPUs notice a SIGKILLed runner (the hook waits with acquire_watching)
    Trial("explore", "v6", "kill_runner", 9, 1.0),
    # issue 30 item 1: a Ctrl-C while the runner spawns its CPUs, or its jobs, is not lost
    Trial("stress", "locked", "sigint_startup", 10, 1.2),
    Trial("explore", "v6", "sigint_startup", 11, 1.0),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("trial", TRIALS, ids=str)
def test_one_fault(trial: Trial) -> None:
    o = run_trial(trial)
    assert o.hit, f"{trial}: the fault was not injected (rc {o.rc})"
    assert not o.false_alarms, f"{trial}: false alarm {o.false_alarms}"
    assert not o.hung and not o.problems, f"{trial}: {o.problems}"
    assert not o.leaked, f"{trial}: left in /dev/shm {o.leaked}"
    assert not o.orphans, f"{trial}: processes left {o.orphans}"


@pytest.mark.parametrize("holder_was_victim", [True, False])
def test_a_killed_lock_holder_is_its_fault_not_the_variant(
    holder_was_victim: bool, tmp_path: Path
) -> None:
    """lock_leaked naming the CPU the trial SIGKILLed is the documented account of that
    kill (see test_stress.py); naming any other pid it is a false alarm on ``locked``."""
    out = Outcome(Trial("stress", "locked", "kill_cpu", 1, 1.0), rc=1, hit=True, victim=4242)
    holder = 4242 if holder_was_victim else 4243
    example = {"a": holder, "cpu": 0}
    report = {
        "variants": [
            {"variant": "locked", "violations": {"lock_leaked": {"count": 1, "example": example}}}
        ]
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    _judge(out, "", "", str(path))
    if holder_was_victim:
        assert out.ok, (out.problems, out.false_alarms)
    else:
        assert out.false_alarms == ["lock_leaked"]
