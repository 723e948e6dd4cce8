"""Campaigns on real Dask clusters on this machine (127.0.0.1 only, 2 worker processes):
the merged verdict, a worker killed mid-task, Ctrl-C, and a scheduler started by hand."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from distributed import Client

from shmpamt import api
from shmpamt.campaign.cluster import local_cluster, run_campaign
from shmpamt.campaign.matrix import MAX_SHARDS, Plan, ShardOutcome, merge_shards
from shmpamt.machine.ipc import parse_name, pid_alive

#: one xdist worker runs every cluster test: two clusters racing for ports and cores
#: on a 2-core machine test the machine, not the code
pytestmark = pytest.mark.xdist_group("dask")


def _descendants(root: int) -> set[int]:
    """``root`` and every live process below it (from /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out = {root}
    while True:
        more = {p for p, pp in parent.items() if pp in out} - out
        if not more:
            return out
        out |= more


def _shm_of(pids: set[int]) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if (p := parse_name(n)) and p.pid in pids]


def _wait_gone(pids: set[int], timeout: float = 15) -> list[str]:
    """IPC objects created by ``pids`` still there after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (left := _shm_of(pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_merged_verdict_equals_the_shards_run_one_by_one() -> None:
    plan = Plan(("rfc-norecheck", "locked"), ("pct",), seed=3, seeds=1, executions=20)
    run = run_campaign(plan, workers=2)
    assert not run.interrupted and len(run.outcomes) == 2 and run.workers == 2
    direct = [
        # one explorer per shard, as a campaign worker runs it (placement.default_jobs)
        ShardOutcome(s, api.run(replace(s.config(), jobs=1)).to_dict(), worker="direct")
        for s in plan.shards()
    ]
    via_dask = merge_shards(run.outcomes)
    one_by_one = merge_shards(direct)
    assert {v: s.verdict() for v, s in via_dask.items()} == {
        v: s.verdict() for v, s in one_by_one.items()
    }
    assert via_dask["rfc-norecheck"].failing and not via_dask["locked"].failing
    # every shard says which worker ran it
    assert {o.worker for o in run.outcomes} <= {"0", "1"}


def test_a_worker_killed_mid_task_is_retried_and_leaves_nothing() -> None:
    plan = Plan(("locked",), ("random",), seeds=2, budget=3.0)
    killed: set[int] = set()
    with local_cluster(2) as cluster:
        spy = Client(cluster, set_as_default=False)
        try:

            def kill_one() -> None:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not killed:
                    busy = [w for w, keys in spy.processing().items() if keys]
                    if busy:
                        time.sleep(1.5)  # its shard's system is up and running
                        pid = spy.run(os.getpid, workers=[busy[0]])[busy[0]]
                        killed.add(pid)
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.1)

            t = threading.Thread(target=kill_one)
            t.start()
            run = run_campaign(plan, scheduler=cluster.scheduler_address, retries=1)
            t.join()
        finally:
            spy.close()
    assert killed, "no worker was busy"
    # Invariant: the killed shard ran again, and the verdict covers every shard.
    assert len(run.outcomes) == 2 and all(o.result is not None for o in run.outcomes)
    assert max(o.attempts for o in run.outcomes) >= 2
    assert merge_shards(run.outcomes)["locked"].retried
    assert not _wait_gone(killed), "the killed worker's shard left IPC objects"


def test_ctrl_c_stops_every_task_with_a_partial_report(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    cmd = [sys.executable, "-m", "shmpamt", "campaign", "--variant", "locked"]
    cmd += ["--strategy", "random", "--seeds", "6", "--budget", "60", "--workers", "2"]
    proc = subprocess.Popen(
        [*cmd, "--db", "off", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            family = _descendants(proc.pid)
            seen |= family
            if len({parse_name(n).pid for n in _shm_of(family)}) >= 2:  # type: ignore[union-attr]
                break  # both workers' shard systems are up
            time.sleep(0.2)
        time.sleep(1.0)
        seen |= _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    report = json.loads(out.read_text())
    assert report["interrupted"] == "SIGINT" and not report["complete"]
    assert report["shards_reported"] < report["shards_total"] == 6
    assert "partial report" in stdout
    # Invariant: no process of the campaign is left, and none of its IPC objects.
    deadline = time.monotonic() + 10
    while [p for p in seen if pid_alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)  # a worker's exit may trail the client's by a moment
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in seen if pid_alive(p)}
    assert not left
    assert not _shm_of(seen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dask_processes() -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1; all killed after."""
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [
                str(bin_dir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(bin_dir / "dask"),
                        "worker",
                        addr,
                        "--nthreads",
                        "1",
                        "--resources",
                        "shmpamt=1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        with Client(addr, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        yield addr
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def test_campaign_against_a_scheduler_started_by_hand(dask_processes: str, tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    cmd = [sys.executable, "-m", "shmpamt", "campaign", "--scheduler", dask_processes]
    cmd += ["--variant", "rfc-norecheck", "--strategy", "pct", "--seeds", "2"]
    cmd += ["--executions", "10", "--db", str(tmp_path / "db"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["complete"] and report["workers"] == 2 and report["shards_reported"] == 2
    (v,) = report["variants"]
    assert v["verdict"] and all(k["best"]["where"] for k in v["kinds"].values())
    assert report["stored_new"] >= 1  # the client stored what the workers found


def _campaign(*args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "shmpamt", "campaign", "--variant", "locked", *args]
    return subprocess.Popen(
        [*cmd, "--workers", "2", "--db", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _ctrl_c_and_judge(proc: subprocess.Popen[str], seen: set[int]) -> tuple[str, str, float]:
    """Ctrl-C the campaign's group; its output and how long the stop took, after checking
    that it exited 130 with no noise and left no process and no IPC object."""
    seen |= _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    took = time.monotonic() - t0
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr and "Exception ignored" not in stderr, stderr
    deadline = time.monotonic() + 10
    while [p for p in seen if pid_alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in seen if pid_alive(p)]
    assert not _shm_of(seen)
    return stdout, stderr, took


def test_ctrl_c_while_the_cluster_starts_is_not_lost() -> None:
    """SIGINT used to be ignored while the local cluster started its workers: the Ctrl-C
    was thrown away and the campaign ran to its end."""
    proc = _campaign("--strategy", "random", "--seeds", "4", "--budget", "30")
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while not any("spawn_main" in _cmdline(p) for p in seen):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no worker was started"
        time.sleep(0.01)
        seen |= _descendants(proc.pid)
    stdout, _, took = _ctrl_c_and_judge(proc, seen)
    assert "interrupted by SIGINT" in stdout
    assert took < 30, took


def test_ctrl_c_stops_the_largest_campaign_as_fast_as_a_small_one() -> None:
    """A matrix at the bound: the client keeps only a few tasks in flight, so the stop
    neither waits for nor cancels the rest one by one (it used to hang)."""
    proc = _campaign("--strategy", "stress", "--seeds", str(MAX_SHARDS), "--budget", "2")
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    while len({parse_name(n).pid for n in _shm_of(seen)}) < 2:  # type: ignore[union-attr]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no shard started"
        seen |= _descendants(proc.pid)
        time.sleep(0.1)
    stdout, _, took = _ctrl_c_and_judge(proc, seen)
    assert f"of {MAX_SHARDS} shards reported" in stdout and "did not run" in stdout
    assert took < 30, took


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
