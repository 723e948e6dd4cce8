"""``shmpamt stress --db``: the campaign's explore half stores what it finds, and stored
failures are replayed first; free-running stress alone stores nothing (docs/campaign.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shmpamt.config import StressCampaign
from shmpamt.errors import UsageError
from shmpamt.records.faildb import FailureDB

# The schedules here were recorded against the one-step module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_step_module")

#: rfc's two puts both issuing REMOVE (minimised), as explore would have stored it
RFC = "s1:rfc:c2.r2.g1.p2.w1:0x30.1"


def _stress(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmpamt", "stress", "--variant", "rfc", "--seed", "1", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_the_default_campaign_stores_its_explore_findings_and_replays_them_first(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db"
    first = _stress(tmp_path, "--mode", "both", "--duration", "2", "--db", str(db))
    assert first.returncode == 1, first.stdout + first.stderr
    stored = FailureDB(db).entries()
    # Invariant: what is stored is what explore found, replayable, of this variant.
    assert stored and {e.variant for e in stored} == {"rfc"}, stored
    assert "rfc regressions: 0 stored schedules replayed" in first.stdout  # none yet
    report = tmp_path / "again.json"
    again = _stress(
        tmp_path, "--mode", "both", "--duration", "2", "--db", str(db), "--json", str(report)
    )
    assert again.returncode == 1, again.stdout + again.stderr
    n = len(stored)
    assert f"rfc regressions: {n} stored schedules replayed, {n} still fail" in again.stdout
    parts = json.loads(report.read_text())["variants"]
    explore = next(p for p in parts if p["mode"] == "explore")
    assert explore["regressions"]["replayed"] == n, explore
    assert "regressions" not in next(p for p in parts if p["mode"] == "stress")


def test_free_running_stress_replays_stored_failures_first_and_stores_nothing(
    tmp_path: Path,
) -> None:
    db = FailureDB(tmp_path / "db")
    db.add("remove_absent", RFC, "dpor")
    report = tmp_path / "r.json"
    p = _stress(
        tmp_path, "--duration", "0.5", "--chaos", "0", "--db", str(db.root), "--json", str(report)
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "rfc regressions: 1 stored schedules replayed, 1 still fail" in p.stdout
    assert f"still fails (remove_absent): shmpamt replay {RFC}" in p.stdout
    (only,) = json.loads(report.read_text())["variants"]
    assert only["mode"] == "stress" and only["regressions"]["still_failing"] == 1
    assert "remove_absent" in only["verdict"]
    assert [e.schedule for e in db.entries()] == [RFC]  # free-running stress stored nothing
    off = _stress(tmp_path, "--duration", "0.5", "--db", "off")
    assert "regressions:" not in off.stdout, off.stdout


def test_a_campaign_database_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(UsageError, match="not a directory"):
        StressCampaign(("rfc",), db=str(f))
    p = _stress(tmp_path, "--db", str(f))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--db" in p.stderr and "Traceback" not in p.stderr
