"""The failure database: de-duplication under concurrent writers, and the regression
check that replays stored failures before any new search."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shmpamt
from shmpamt.errors import UsageError
from shmpamt.records.faildb import DB_ENV, FailureDB, entry_key, resolve_db

# The schedules here were recorded against the one-step module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_step_module")

SCHED = "s1:rfc-norecheck:c2.r2.g1.p2.w6:0x8.1x4.0x8.1.0.1"


def test_add_is_deduplicated_and_moves_last_seen(tmp_path: Path) -> None:
    db = FailureDB(tmp_path / "db")
    assert db.add("add_present", SCHED, "pct", seen="2026-01-01T00:00:00Z")
    assert not db.add("add_present", SCHED, "random", seen="2026-02-01T00:00:00Z")
    assert db.add("remove_absent", SCHED, "pct")  # another kind is another failure
    entries = {x.kind: x for x in db.entries("rfc-norecheck")}
    first = entries["add_present"]
    # the first sighting keeps its strategy and date; the second moves last_seen only
    assert (first.strategy, first.first_seen) == ("pct", "2026-01-01T00:00:00Z")
    assert first.last_seen == "2026-02-01T00:00:00Z"
    assert first.key == entry_key("rfc-norecheck", "", "add_present", SCHED)
    assert db.get(first.key[:6]) == first
    assert db.entries("kai") == []
    assert db.clear("rfc-norecheck") == 2
    assert db.entries() == []


def test_malformed_schedule_and_broken_files(tmp_path: Path) -> None:
    db = FailureDB(tmp_path)
    with pytest.raises(UsageError):
        db.add("add_present", "s1:nope", "pct")
    with pytest.raises(UsageError, match="unknown kind"):
        db.add("no_such_kind", SCHED, "pct")
    db.dir.mkdir(parents=True)
    (db.dir / "0000.json").write_text("{not json")
    assert db.entries() == [] and [b.path for b in db.broken] == [db.dir / "0000.json"]


def test_resolve_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DB_ENV, raising=False)
    assert resolve_db(None) == ".shmpamt"
    monkeypatch.setenv(DB_ENV, "/tmp/x")
    assert resolve_db(None) == "/tmp/x"
    assert resolve_db("mine") == "mine"
    assert resolve_db("off") is None
    monkeypatch.setenv(DB_ENV, "off")
    assert resolve_db(None) is None


def _writer(root: str, start: Any, out: Any) -> None:
    db = FailureDB(root)
    start.wait()
    new = 0
    for i in range(40):  # the same 40 failures as the other writer, at the same time
        new += db.add("add_present", f"s1:rfc:c2.r2.g1.p2.w{i}:0x3.1", "pct")
    out.put(new)


def test_concurrent_writers_store_each_failure_once(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    news = [out.get(timeout=60), out.get(timeout=60)]
    for p in procs:
        p.join(30)
    # Invariant: each failure was new to exactly one writer, and is one file.
    assert sum(news) == 40
    files = os.listdir(FailureDB(tmp_path).dir)
    assert len(files) == 40 and all(f.endswith(".json") for f in files)  # no temp file left
    assert len(FailureDB(tmp_path).entries()) == 40


def test_stored_regression_is_replayed_before_the_search(tmp_path: Path) -> None:
    """A stored failing schedule is reported by the regression check even when the
    search itself (one execution of a random walk) does not find its kind."""
    db = tmp_path / "db"
    FailureDB(db).add("add_present", SCHED, "pct")
    res = shmpamt.explore(
        "rfc-norecheck", strategy="random", executions=1, seed=123, minimize=False, db=str(db)
    )
    regs = res.raw.regressions
    assert regs is not None and [(r.kind, r.still_fails) for r in regs] == [("add_present", True)]
    assert "add_present" in res.verdict
    lines = res.summary().splitlines()
    assert lines[1].strip() == "regressions: 1 stored schedules replayed, 1 still fail"
    # what the search found is stored for the next run
    assert {e.kind for e in FailureDB(db).entries()} >= {"add_present"}


def test_cli_reports_regressions_before_the_findings(tmp_path: Path) -> None:
    db = tmp_path / "db"
    FailureDB(db).add("add_present", SCHED, "pct")
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "shmpamt", "explore", "--variant", "rfc-norecheck"]
    cmd += ["--strategy", "random", "--executions", "3", "--seed", "5", "--no-minimize"]
    proc = subprocess.run(
        [*cmd, "--db", str(db), "--json", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    reg = next(i for i, x in enumerate(lines) if "regressions: 1 stored schedules replayed" in x)
    search = [i for i, x in enumerate(lines) if ": shmpamt replay" in x and "still" not in x]
    # Invariant: the regression check is reported before any finding of the search.
    assert "1 still fail" in lines[reg] and search and reg < min(search)
    report = json.loads(out.read_text())["variants"][0]
    assert report["regressions"]["replayed"] == 1 and report["regressions"]["still_failing"] == 1
    listed = subprocess.run(
        [sys.executable, "-m", "shmpamt", "db", "list", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0 and "add_present" in listed.stdout


def test_off_turns_the_database_off_in_the_library_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's word for "no database" means the same through the library: no
    # directory named "off" appears in the working directory.
    from shmpamt import api

    monkeypatch.chdir(tmp_path)
    r = api.explore("rfc-norecheck", strategy="random", executions=30, jobs=1, seed=1, db="off")
    assert r.found, "rfc-norecheck has violations a random walk meets in 30 executions"
    assert not (tmp_path / "off").exists()
