"""--jobs: the same verdict from one explorer or several, and one clean stop for all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shmpamt.api as api
from shmpamt.errors import RunFailure
from shmpamt.machine.ipc import parse_name, pid_alive, worker_suffix

HERE = Path(__file__).resolve().parent


def _objects_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if (p := parse_name(n)) and p.pid == pid)


def _all_objects() -> set[str]:
    """Every shmpamt object of this xdist worker (jobs are other processes: other pids)."""
    mine = worker_suffix()
    return {n for n in os.listdir("/dev/shm") if (p := parse_name(n)) and (p.worker or "") == mine}


def _orphaned(names: set[str]) -> set[str]:
    return {n for n in names if (p := parse_name(n)) and not pid_alive(p.pid)}


@pytest.mark.parametrize("variant", ["v6", "rfc-norecheck"])
def test_dpor_verdict_and_replays_do_not_depend_on_jobs(variant: str) -> None:
    kw = dict(strategy="dpor", cpus=2, rounds=1, budget=120.0, minimize=False)
    one = api.explore(variant, jobs=1, **kw)  # type: ignore[arg-type]
    two = api.explore(variant, jobs=2, **kw)  # type: ignore[arg-type]
    assert one.raw.explore is not None and two.raw.explore is not None
    # Invariant: both searches covered every class, so they saw the same kinds.
    assert one.raw.explore.claim == two.raw.explore.claim == "verified"
    assert one.found == two.found
    # The execution counts may differ: at the split states every awake CPU is tried, and
    # a sleeper's may-write footprint can let a class run twice (test_dpor.py checks the
    # exact partition on toys, where it cannot).
    for f in two.findings:
        assert f.kind in api.replay(f.schedule).found, f


def test_a_crashing_cpu_in_any_job_stops_every_job_cleanly() -> None:
    before = _all_objects()
    t0 = time.monotonic()
    try:
        r = api.explore(f"{HERE / 'report_variants.py'}:GetExits", jobs=2, executions=50)
    except RunFailure as e:
        assert "cpu" in str(e), e
    else:
        assert r.incidents and not r.ok, r.to_dict()
    assert time.monotonic() - t0 < 60
    # Invariant: nothing the jobs created is left behind. (/dev/shm is the machine's: a
    # live creator's objects belong to some other run, e.g. another checkout's tests;
    # a leak is an object whose creator is gone, and the reapers get 5 s for those.)
    deadline = time.monotonic() + 5
    while (left := _orphaned(_all_objects() - before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == set()


def test_ctrl_c_stops_all_jobs_with_one_report(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    p = subprocess.Popen(
        [sys.executable, "-m", "shmpamt", "explore", "--variant", "v6", "--strategy", "random",
         "--jobs", "2", "--budget", "60", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(4.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stdout + stderr
    data = json.loads(out.read_text())
    assert data["interrupted"] == "SIGINT" and data["variants"], data
    assert _objects_of(p.pid) == []
