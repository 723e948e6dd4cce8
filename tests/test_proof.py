"""Distributed proofs on Dask clusters on this machine (127.0.0.1 only): the count is
the unsplit search's, through a LocalCluster and through `dask scheduler` + two
`dask worker`; a killed worker, Ctrl-C then --resume, and a subtree that always crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from distributed import Client
from test_campaign_dask import _descendants, _shm_of, _wait_gone, dask_processes

from shmpamt import api
from shmpamt.campaign.cluster import local_cluster
from shmpamt.campaign.proof import Frontier, ProofSpec, run_proof, simulate
from shmpamt.explorer.footprint import POOL_RULE
from shmpamt.explorer.subtree import close_session, run_subtree
from shmpamt.schedulers.dpor import HALT_RULE

pytestmark = pytest.mark.xdist_group("dask")
__all__ = ["dask_processes"]  # the fixture, shared with the campaign tests

HERE = Path(__file__).parent
CRASHY = f"{HERE / 'crashy_variant.py'}:CrashOnFastPath"
#: v6 3 CPUs x 1 round: complete executions of the unsplit search, with symmetry (the
#: campaign's default, as explore's) and without
V6_3X1 = ["--variant", "v6", "--strategy", "dpor", "--cpus", "3", "--rounds", "1"]
V6_3X1_SYMMETRY, V6_3X1_PLAIN = 529, 1152


def _unsplit(
    variant: str, cpus: int, rounds: int, symmetry: bool, halt: bool = False
) -> api.Result:
    cfg = api.ExploreConfig(
        variant, strategy="dpor", cpus=cpus, rounds=rounds, jobs=1, budget=600, symmetry=symmetry,
        halt_at_violation=halt,
    )  # fmt: skip
    return api.run(cfg)


def _in_process(spec: ProofSpec) -> Frontier:
    """The proof's tasks one after the other in this process, to its verdict."""
    f = Frontier(spec)
    try:
        while f.outstanding:
            assert f.apply(run_subtree(spec.task(f.outstanding[0])))
    finally:
        close_session()
    assert len(f.log) > 3 and f.verdict == "verified"
    return f


@pytest.mark.parametrize(
    ("variant", "symmetry"),
    [("v6", False), ("v6", True), ("rfc-norecheck", True)],
)
def test_subtree_tasks_on_the_rig_add_up_to_the_unsplit_search(
    variant: str, symmetry: bool
) -> None:
    """2 x 1 in-process, with slices of 3 executions: many tasks, one count, the same
    kinds. With symmetry the split states' alternatives are the CPUs it does not prune,
    in every task alike, so the tree of subtrees is still fixed."""
    spec = ProofSpec(variant, cpus=2, rounds=1, slice=3, symmetry=symmetry)
    f = _in_process(spec)
    whole = _unsplit(variant, 2, 1, symmetry)
    assert f"in {f.total('complete')} complete executions" in whole.raw.coverage, whole
    assert ("symmetry over CPUs" in whole.raw.coverage) == symmetry
    assert set(f.kinds) == set(whole.found) and (variant == "v6") == (not f.kinds)
    # The task log replays: more workers never take longer, and the cost per task counts.
    one, four = simulate(f.log, 1), simulate(f.log, 4)
    assert four <= one and simulate(f.log, 4, cost=1.0) >= four + 1.0


def test_halting_subtree_tasks_add_up_to_the_unsplit_halting_search() -> None:
    """The halt ends a path's search wherever it falls against the split states:
    the tasks still count what the unsplit halting search counts, with its kinds."""
    spec = ProofSpec("rfc-norecheck", cpus=2, rounds=2, slice=50, halt_at_violation=True)
    assert HALT_RULE in spec.reductions and spec.to_dict()["halt_at_violation"] is True
    assert "halt_at_violation" not in ProofSpec("rfc-norecheck").to_dict()
    f = _in_process(spec)
    whole = _unsplit("rfc-norecheck", 2, 2, True, halt=True)
    assert f"in {f.total('complete')} complete executions" in whole.raw.coverage, whole
    assert set(f.kinds) == set(whole.found) and "remove_while_in_use" in f.kinds


def _campaign(args: list[str], **kw: object) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "shmpamt", "campaign", *args]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,  # type: ignore[call-overload]
    )


def _report(path: Path) -> dict[str, object]:
    (proof,) = json.loads(path.read_text())["proofs"]
    assert isinstance(proof, dict)
    return proof


def test_v6_3x1_verified_through_two_local_workers(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    args = [*V6_3X1, "--workers", "2", "--split-depth", "6"]
    p = _campaign([*args, "--db", str(tmp_path / "db"), "--json", str(out)])
    seen: set[int] = set()
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        seen |= _descendants(p.pid)  # the workers, their kept sessions' daemons and CPUs
        time.sleep(0.2)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 0, stdout + stderr
    # Invariant: each worker's kept session is closed when the cluster ends.
    assert not _shm_of(seen)
    r = _report(out)
    assert r["verdict"] == "verified" and r["complete_executions"] == V6_3X1_SYMMETRY
    assert r["workers"] == 2 and r["proof"]["depth"] == 6 and r["proof"]["symmetry"] is True
    # The claim names what it rests on: symmetry and, on one range, the pool rule.
    assert r["reductions"] == ["symmetry over interchangeable CPUs", POOL_RULE]
    assert "verified" in stdout and (tmp_path / "db" / "proofs").is_dir()
    assert POOL_RULE in " ".join(stdout.split())


def test_v6_3x1_verified_through_a_scheduler_started_by_hand(
    dask_processes: str, tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    args = [*V6_3X1, "--no-symmetry", "--scheduler", dask_processes, "--db", "off"]
    p = _campaign([*args, "--json", str(out)])
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stdout + stderr
    r = _report(out)
    assert r["verdict"] == "verified" and r["complete_executions"] == V6_3X1_PLAIN
    assert r["workers"] == 2 and r["proof"]["symmetry"] is False
    assert r["reductions"] == [POOL_RULE]


def test_a_killed_worker_still_ends_verified_with_the_same_count() -> None:
    spec = ProofSpec("v6", cpus=3, rounds=1, symmetry=False)
    killed: set[int] = set()
    with local_cluster(2) as cluster:
        client = Client(cluster, set_as_default=False)
        try:
            frontier = Frontier(spec)

            def kill_one() -> None:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not killed:
                    busy = [w for w, keys in client.processing().items() if keys]
                    if busy and len(frontier.log) >= 2:
                        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                        killed.add(pid)
                        os.kill(pid, signal.SIGKILL)
                    time.sleep(0.05)

            t = threading.Thread(target=kill_one)
            t.start()
            run_proof(client, frontier)
            t.join()
        finally:
            client.close()
    assert killed, "no worker was busy"
    # Invariant: the lost subtree ran again elsewhere; the proof is whole.
    assert frontier.verdict == "verified" and frontier.total("complete") == V6_3X1_PLAIN
    assert not _wait_gone(killed), "the killed worker left IPC objects"


def test_ctrl_c_then_resume_ends_verified_with_the_same_count(tmp_path: Path) -> None:
    db = tmp_path / "db"
    out = tmp_path / "p.json"
    # Without symmetry: the larger tree, so the interrupt comes while it runs.
    args = [*V6_3X1, "--no-symmetry", "--workers", "2", "--db", str(db), "--json", str(out)]
    p = _campaign(args)
    seen: set[int] = set()
    deadline = time.monotonic() + 200
    checkpoint: list[Path] = []
    while time.monotonic() < deadline and not checkpoint:
        assert p.poll() is None, p.communicate()
        seen |= _descendants(p.pid)
        checkpoint = list((db / "proofs").glob("*.json")) if (db / "proofs").is_dir() else []
        time.sleep(0.1)
    assert checkpoint, "no checkpoint was written"
    os.killpg(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stdout + stderr
    saved = json.loads(checkpoint[0].read_text())
    assert saved["outstanding"], "the proof ended before the interrupt: nothing to resume"
    assert "--resume" in stdout
    assert not _shm_of(seen)
    p = _campaign([*args, "--resume"])
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stdout + stderr
    assert "resuming" in stdout
    r = _report(out)
    assert r["verdict"] == "verified" and r["complete_executions"] == V6_3X1_PLAIN and r["resumed"]


def test_a_subtree_that_always_crashes_makes_the_proof_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    args = ["--variant", CRASHY, "--strategy", "dpor", "--cpus", "2", "--rounds", "1"]
    p = _campaign([*args, "--workers", "2", "--db", "off", "--json", str(out)])
    stdout, stderr = p.communicate(timeout=300)
    seen = {p.pid}
    assert p.returncode == 2, stdout + stderr
    r = _report(out)
    assert r["verdict"] == "incomplete" and "failed 2 times" in str(r["reason"])
    assert "incomplete" in stdout and ": verified" not in stdout
    assert not _shm_of(seen)


def test_the_command_line_defaults_are_the_proofs() -> None:
    """cli.campaign keeps its own copies (it does not load Dask for --help)."""
    from shmpamt.campaign import proof
    from shmpamt.cli import campaign

    assert campaign.DEFAULT_SLICE == proof.DEFAULT_SLICE
    assert campaign.DEFAULT_SPLIT_DEPTH == proof.DEFAULT_DEPTH
