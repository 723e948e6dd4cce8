"""A proof's checkpoint read back as untrusted input, and a task stopped while it starts.

A checkpoint that is truncated, a link, huge, a FIFO, of another schema, edited
or self-contradictory is refused with one line (exit 2 on the command line),
never resumed into a wrong verdict, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from shmpamt.campaign import proof
from shmpamt.campaign.proof import (
    Frontier,
    ProofSpec,
    check_checkpoint_target,
    checkpoint_path,
)
from shmpamt.errors import UsageError
from shmpamt.explorer import subtree
from shmpamt.explorer.subtree import close_session, run_subtree

SPEC = ProofSpec("v6", cpus=2, rounds=1, slice=3)


def _frontier() -> Frontier:
    """A frontier part-way through, as a proof leaves it: one task applied."""
    f = Frontier(SPEC)
    assert f.apply(
        {
            "prefix": [],
            "finished": {"0": {"executions": 4, "complete": 3, "kinds": {}}},
            "outstanding": [[1], [2]],
            "executions": 4,
            "seconds": 0.1,
            "findings": [],
        }
    )
    return f


def _saved(tmp_path: Path) -> Path:
    path = checkpoint_path(str(tmp_path / "db"), SPEC)
    _frontier().save(path)
    return path


def _resealed(path: Path, edit: dict[str, object]) -> None:
    """Rewrite the checkpoint with ``edit`` applied and a checksum that matches it."""
    data = json.loads(path.read_text())
    data.update(edit)
    body = {k: v for k, v in data.items() if k != "checksum"}
    data["checksum"] = proof._checksum(body)
    path.write_text(json.dumps(data))


def test_a_saved_checkpoint_reads_back_the_same(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    back = Frontier.load(path, SPEC)
    f = _frontier()
    assert back.to_dict() == f.to_dict() and back.total("complete") == 3
    # Written through records/publish.py: no temp file is left beside it.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UsageError, match="not valid JSON"):
        Frontier.load(path, SPEC)


def test_a_linked_checkpoint_is_never_followed(tmp_path: Path) -> None:
    real = _saved(tmp_path)
    link = tmp_path / "db" / "proofs" / "link.json"
    link.symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        Frontier.load(link, SPEC)
    with pytest.raises(UsageError, match="not a regular file"):
        check_checkpoint_target(link)


def test_a_fifo_checkpoint_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        Frontier.load(fifo, SPEC)


def test_a_huge_checkpoint_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(proof.MAX_CHECKPOINT_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(UsageError, match="larger than"):
        Frontier.load(path, SPEC)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format": 1}, "another format"),
        ({"spec": {**SPEC.to_dict(), "slice": 4}}, "another proof"),
        ({"outstanding": "all"}, "damaged"),
        ({"outstanding": [[-1]]}, "damaged"),
        ({"parts": {"0": {"complete": "many"}}}, "damaged"),
        ({"parts": {"x": {}}}, "damaged"),
        ({"findings": {"k": {"kind": "k"}}}, "damaged"),
        ({"elapsed": "soon"}, "damaged"),
        # Self-contradictory: a finished subtree that is also outstanding, or holds another.
        ({"outstanding": [[0]]}, "overlaps"),
        ({"parts": {"0": {"complete": 3}, "0.1": {"complete": 1}}}, "overlaps"),
    ],
)
def test_a_checkpoint_of_the_wrong_schema_is_refused(
    tmp_path: Path, edit: dict[str, object], message: str
) -> None:
    path = _saved(tmp_path)
    _resealed(path, edit)
    with pytest.raises(UsageError, match=message):
        Frontier.load(path, SPEC)


def test_an_edited_count_never_resumes_into_a_verdict(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = json.loads(path.read_text())
    # Nothing outstanding and a made-up count: without the checksum this would be "verified".
    data["outstanding"] = []
    data["parts"]["0"]["complete"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="checksum"):
        Frontier.load(path, SPEC)


def _campaign(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shmpamt", "campaign", "--variant", "v6", "--strategy", "dpor"]
    return subprocess.run(
        [*cmd, "--cpus", "2", "--rounds", "1", "--slice", "3", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("damage", ["truncated", "link"])
def test_resume_of_a_bad_checkpoint_is_one_line_and_exit_2(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "db"
    path = _saved(tmp_path)
    if damage == "truncated":
        path.write_text('{"format": 2, "spec"')
    else:
        elsewhere = tmp_path / "elsewhere.json"
        path.rename(elsewhere)
        path.symlink_to(elsewhere)
    t0 = time.monotonic()
    p = _campaign("--workers", "1", "--db", str(db), "--resume")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert ("checkpoint" in line and "remove it" in line) or "not a regular file" in line
    assert "verified" not in p.stdout
    # Refused before a cluster started (that alone takes seconds here).
    assert time.monotonic() - t0 < 60
    if damage == "link":
        assert (tmp_path / "elsewhere.json").read_text().startswith("{")


def test_a_task_stopped_while_its_session_starts_returns_at_once() -> None:
    close_session()
    t0 = time.monotonic()
    out = run_subtree(SPEC.task(()), should_stop=lambda: True)
    took = time.monotonic() - t0
    # Ctrl-C before the CPUs were up: the start is given up, nothing ran, nothing is kept,
    # and the whole subtree goes back (the shm_clean fixture checks /dev/shm).
    assert out["stopped"] and out["executions"] == 0 and out["finished"] == {}
    assert out["outstanding"] == [[]]
    assert subtree._session is None
    assert took < 10, took
