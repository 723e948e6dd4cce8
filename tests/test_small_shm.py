"""A /dev/shm too small for a run: one line and exit 2 before any CPU starts, never a
SIGBUS (exit 135) or a job that "exited without a result", and nothing left behind.

Each case runs in a private mount namespace whose /dev/shm is a tiny tmpfs (root only;
skipped elsewhere), so the machine's own /dev/shm is never touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private /dev/shm",
)

#: what the shell prints after the command: its status, then what /dev/shm holds
_TAIL = 'echo "rc=$rc"; ls -A /dev/shm | wc -l'


def run_in_small_shm(size: str, *args: str) -> tuple[int, str, str, int]:
    """(exit status, stdout, stderr, objects left in that /dev/shm) of ``shmpamt ARGS``."""
    cmd = shlex.join([sys.executable, "-m", "shmpamt", *args])
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm || exit 99; {cmd}; rc=$?; {_TAIL}"
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=180
    )
    if r.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {r.stderr.strip()}")
    *out, rc_line, left = r.stdout.rstrip("\n").split("\n")
    assert rc_line.startswith("rc="), r.stdout
    return int(rc_line[3:]), "\n".join(out), r.stderr, int(left)


@pytest.mark.parametrize(
    ("size", "args"),
    [
        ("16k", ["stress", "--variant", "locked", "--duration", "2"]),
        ("24k", ["stress", "--variant", "locked", "--duration", "2", "--seed", "1"]),
        ("400k", ["stress", "--variant", "v6", "--duration", "2", "--cpus", "4"]),
        ("16k", ["explore", "--variant", "v6", "--budget", "2", "--jobs", "2", "--db", "off"]),
        ("64k", ["explore", "--variant", "locked", "--budget", "2", "--jobs", "2", "--db", "off"]),
        ("400k", ["explore", "--variant", "v6", "--budget", "2", "--jobs", "2", "--db", "off"]),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]),
)
def test_no_room_in_dev_shm_is_one_line_before_any_cpu(size: str, args: list[str]) -> None:
    rc, out, err, left = run_in_small_shm(size, *args)
    assert rc == 2, (rc, out, err)  # not 135 (SIGBUS)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no room in /dev/shm" in lines[0], err
    assert "Traceback" not in out + err and "without a result" not in out + err
    assert left == 0  # every segment and semaphore created before the failure is gone
