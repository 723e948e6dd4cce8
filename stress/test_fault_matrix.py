"""Fault matrix (issue 17, item 6): every fault kind at random moments, 20+ trials each.

Not part of the default run (``testpaths`` is ``tests/``, and this module skips itself)::

    SHMPAMT_FAULT_MATRIX=1 .venv/bin/pytest stress/test_fault_matrix.py -o faulthandler_timeout=0
    SHMPAMT_FAULT_MATRIX=1 SHMPAMT_FAULT_MATRIX_TRIALS=3 pytest stress/test_fault_matrix.py

Run it serially (no ``-n``): the summary is per process, and parallel runs on two
cores turn timing into noise.

Each trial runs the installed CLI (``stress`` or ``explore`` on locked, v6, and the
buggy rfc and kai so detection is seen to survive) and injects one fault: SIGKILL of
a CPU, the daemon or the runner; SIGSTOP of the daemon or a CPU for 4-15 s; SIGINT or
SIGTERM to the runner. Checked: a documented exit status, no hang, nothing left in
/dev/shm, no process left, valid JSON, and never a violation on locked or v6. At the
end a summary table (trials, false alarms, leaks, orphans per kind) is printed, and
written to ``$SHMPAMT_FAULT_MATRIX_SUMMARY`` if set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
from fault_matrix import KINDS, Outcome, Trial, run_trial, summary, trials

PER_KIND = int(os.environ.get("SHMPAMT_FAULT_MATRIX_TRIALS", "20"))
SEED = int(os.environ.get("SHMPAMT_FAULT_MATRIX_SEED", "17"))
ENABLED = os.environ.get("SHMPAMT_FAULT_MATRIX") == "1"
OUTCOMES: list[Outcome] = []


def _param(t: Trial) -> object:
    return t


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    if not ENABLED:
        pytest.skip("the fault matrix runs only with SHMPAMT_FAULT_MATRIX=1")
    yield
    text = summary(OUTCOMES)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("\n" + text)
    path = os.environ.get("SHMPAMT_FAULT_MATRIX_SUMMARY")
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "trial", [_param(t) for t in trials(KINDS, PER_KIND, SEED, False)], ids=str
)
def test_fault(trial: Trial) -> None:
    o = run_trial(trial)
    OUTCOMES.append(o)
    # Invariant: a correct variant is never reported for a violation, whatever the fault.
    assert not o.false_alarms, f"{trial}: false alarm {o.false_alarms}"
    assert not o.hung and not o.problems, f"{trial}: {o.problems}"
    assert not o.leaked, f"{trial}: left in /dev/shm {o.leaked}"
    assert not o.orphans, f"{trial}: processes left {o.orphans}"


# --- issue 30: exhaustion and campaign Ctrl-C at many points (long versions) -------------

from test_small_shm import run_in_small_shm  # noqa: E402

#: /dev/shm sizes from "nothing fits" to "the first objects fit, a later one does not"
SHM_SIZES = ("8k", "16k", "24k", "64k", "128k", "256k", "400k", "600k")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("size", SHM_SIZES)
@pytest.mark.parametrize(
    "args",
    [
        ("stress", "--variant", "locked", "--duration", "2", "--cpus", "4"),
        ("explore", "--variant", "v6", "--budget", "2", "--jobs", "2", "--db", "off"),
    ],
    ids=["stress", "explore-jobs"],
)
def test_small_dev_shm(size: str, args: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for a private /dev/shm")
    rc, out, err, left = run_in_small_shm(size, *args)
    assert left == 0
    if rc == 0:  # it fitted: then the run must simply have worked
        assert "no incident" in out and not err.strip(), (out, err)
        return
    assert rc == 2, (rc, out, err)  # never 135 (SIGBUS)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no room in /dev/shm" in lines[0], err
    assert "Traceback" not in out + err and "without a result" not in out + err


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("at", [round(0.3 + 0.7 * i, 1) for i in range(12)])
def test_campaign_ctrl_c_at(at: float) -> None:
    """A Ctrl-C ``at`` seconds into a campaign at the shard bound, whatever it is doing:
    importing, starting the cluster, submitting, running shards."""
    import signal
    import subprocess
    import time

    from fault_matrix import descendants, objects_of

    from shmpamt.campaign.matrix import MAX_SHARDS
    from shmpamt.machine.ipc import pid_alive

    cmd = [sys.executable, "-m", "shmpamt", "campaign", "--variant", "locked"]
    cmd += ["--strategy", "stress", "--seeds", str(MAX_SHARDS), "--budget", "2"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--db", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: set[int] = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < at and proc.poll() is None:
        seen |= descendants(proc.pid)
        time.sleep(0.02)
    seen |= descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    t1 = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    took = time.monotonic() - t1
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr and "Exception ignored" not in stderr, stderr
    assert took < 30, took
    deadline = time.monotonic() + 15
    while [p for p in seen if pid_alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in seen if pid_alive(p)]
    assert not [o for p in seen for o in objects_of(p)]
