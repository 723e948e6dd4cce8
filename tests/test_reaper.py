"""A runner SIGKILLed where its daemon cannot clean up (before the daemon exists, after it
stopped, or together with it) still leaves nothing in /dev/shm: its reaper removes it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shmpamt.machine.ipc import parse_name

#: a runner that runs an explore shard (the campaign's kind) and SIGKILLs itself at a moment
#: given in argv[1], or runs on until the test kills it ("group")
_RUNNER = r"""
import os, signal, sys
import multiprocessing.process as mpp
from shmpamt import api
from shmpamt.config import ExploreConfig
from shmpamt.module import daemon

where = sys.argv[1]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if where == "startup":  # every name exists, the daemon (their guardian) does not yet
    start = mpp.BaseProcess.start
    def start_then_die(self):
        if self.name.startswith("tdx-module"):
            die()
        start(self)
    mpp.BaseProcess.start = start_then_die
elif where == "teardown":  # the daemon has stopped, the runner has not unlinked yet
    stop = daemon.TdxModule.stop
    def stop_then_die(self, timeout=5.0):
        stop(self, timeout)
        die()
    daemon.TdxModule.stop = stop_then_die
budget = 60.0 if where == "group" else 0.5
api.run(ExploreConfig("locked", strategy="random", cpus=2, budget=budget, jobs=1, pin=False))
"""

#: what a two-CPU explore run creates: 6 system objects, 8 of the module, 4 of the board
_OBJECTS = 18


def _objects_of(pid: int) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if (p := parse_name(e)) is not None and p.pid == pid]


def _left_after(pid: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _objects_of(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize("where", ["startup", "teardown", "group"])
def test_a_killed_runner_leaves_nothing(where: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, where],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if where == "group":
            deadline = time.monotonic() + 60
            while len(_objects_of(proc.pid)) < _OBJECTS and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.1)
            time.sleep(1.0)  # the daemon and both CPUs are up
            # A nanny or a shell may kill the whole group: runner, daemon, CPUs at once.
            os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, stderr
    # Invariant: whatever killed the run and when, none of its IPC objects outlives it.
    try:
        assert _left_after(proc.pid) == []
    finally:
        for e in _objects_of(proc.pid):
            os.unlink(os.path.join("/dev/shm", e))
