"""Ctrl-C and SIGTERM: children stop, a partial report is written, nothing is left, 130/143."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmpamt.machine.ipc import parse_name


def _objects_of(pid: int) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if (p := parse_name(e)) is not None and p.pid == pid]


def _wait_running(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the run has created its IPC objects and its CPUs exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if len(_objects_of(proc.pid)) >= 8:
            time.sleep(1.5)  # let the CPUs get going
            return
        time.sleep(0.1)
    raise AssertionError("run did not start")


@pytest.mark.parametrize(
    ("command", "sig", "code"),
    [
        (["stress", "--variant", "locked", "--variant", "rfc", "--duration", "60"], "INT", 130),
        (["stress", "--variant", "rfc", "--duration", "60", "--chaos"], "TERM", 143),
        (["explore", "--variant", "locked", "--budget", "120", "--strategy", "random"], "INT", 130),
        (["explore", "--variant", "v6", "--budget", "120"], "TERM", 143),
    ],
)
def test_signal_stops_everything_with_a_partial_report(
    tmp_path: Path, command: list[str], sig: str, code: int
) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpamt", *command, "--seed", "1", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_running(proc)
        if sig == "INT":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert f"interrupted by SIG{sig}" in stdout
    data = json.loads(out.read_text())
    assert data["interrupted"] == f"SIG{sig}" and data["complete"] is False
    # Invariant: every IPC object of the run is gone, and so is every child.
    assert _objects_of(proc.pid) == []
    # (multiprocessing's resource tracker exits on its own once its pipe closes)
    deadline = time.monotonic() + 10
    while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left


def _session_members(sid: int) -> list[str]:
    r = subprocess.run(["pgrep", "-a", "-s", str(sid)], capture_output=True, text=True)
    return r.stdout.split("\n")[:-1]


def _spawned_children(pid: int) -> int:
    """How many of ``pid``'s children are multiprocessing spawns (daemon, CPUs, jobs)."""
    n = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_bytes()
            if int(stat.rsplit(b")", 1)[1].split()[1]) != pid:
                continue
            if b"spawn_main" in Path(f"/proc/{d}/cmdline").read_bytes():
                n += 1
        except (OSError, ValueError):
            continue
    return n


def _ctrl_c_once(command: list[str], spawned: int) -> tuple[int, str, str, float]:
    """Run ``command``; Ctrl-C it (its whole group) as soon as it has ``spawned`` spawned
    children, i.e. while it is still starting the others; (status, out, err, seconds the
    stop took)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpamt", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _spawned_children(proc.pid) < spawned:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start its children"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        try:
            out, err = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            raise AssertionError("the run went on after a Ctrl-C during its start-up") from None
        took = time.monotonic() - t0
        # Invariant: every IPC object of the run is gone, and so is every child.
        assert _objects_of(proc.pid) == []
        deadline = time.monotonic() + 10
        while (left := _session_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert left == [], left
        return proc.returncode, out, err, took
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize(
    ("where", "cpus", "spawned"),
    [("while the daemon starts", 2, 1), ("while the CPUs are spawned", 32, 3)],
)
def test_ctrl_c_during_start_up_is_never_lost(where: str, cpus: int, spawned: int) -> None:
    """SIGINT used to be ignored in the runner while it spawned, and so thrown away; and a
    wait for the daemon that a signal interrupted ended in 'internal error: SignalError'."""
    command = ["stress", "--variant", "locked", "--cpus", str(cpus), "--duration", "60"]
    code, out, err, took = _ctrl_c_once([*command, "--seed", "1"], spawned)
    assert code == 130, (where, code, out, err)
    assert "interrupted by SIGINT" in out
    assert "internal error" not in out + err and "Traceback" not in out + err, (out, err)
    assert took < 20, took  # CPUs still starting up are not waited for
