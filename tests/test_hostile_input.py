"""Hostile and broken input to the files the rig reads and writes: a failure database
that lies, is corrupt, read-only or a link elsewhere; report paths that are links,
FIFOs or on a full disk; a user variant that takes a built-in's name.

Each case is what a careless or hostile user (or a repository's checked-in
``.shmpamt/``) can hand the rig; the promise is the README's: one line and exit 2
for what cannot be done, a warning for what is skipped, nothing outside the
database or the report destroyed, nothing half-written left, never a traceback.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import shmpamt
import shmpamt.records.publish as publish_mod
from shmpamt import api
from shmpamt.errors import DatabaseError
from shmpamt.records.faildb import FailureDB, entry_key
from shmpamt.records.schedule_string import encode_variant
from shmpamt.report.terminal import Report
from shmpamt.variants.registry import VariantLoadError, load_variant

# The schedules here were recorded against the one-step module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_step_module")

#: a schedule of kai that shows use_without_pamt (checked below, not assumed)
KAI_BAD = "s1:kai:c2.r2.g1.p2.w1:0x30.1"
#: a schedule of rfc-norecheck that shows add_present
NORECHECK_BAD = "s1:rfc-norecheck:c2.r2.g1.p2.w6:0x8.1x4.0x8.1.0.1"
CLI = [sys.executable, "-m", "shmpamt"]


def _cli(
    *args: str, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _entry(variant: str, kind: str, schedule: str, source: str = "") -> dict[str, Any]:
    return {
        "format": 1,
        "variant": variant,
        "source": source,
        "kind": kind,
        "schedule": schedule,
        "strategy": "pct",
        "first_seen": "2026-01-01T00:00:00Z",
        "last_seen": "2026-01-01T00:00:00Z",
    }


def _put(db: Path, name: str, content: object) -> Path:
    d = db / "failures"
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    # Invariant: whatever the input, the rig answers in its own words.
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "internal error" not in proc.stderr + proc.stdout, proc.stderr


# -- 0: a poisoned database ----------------------------------------------------------


def test_a_mislabelled_entry_never_makes_a_correct_variant_fail(tmp_path: Path) -> None:
    """An entry labelled ``locked`` holding a failing schedule of kai: a search of locked
    skips it with one warning naming the file, and locked stays clean."""
    assert "use_without_pamt" in shmpamt.replay(KAI_BAD).verdict  # the schedule does fail
    db = tmp_path / "db"
    bad = _put(db, "X.json", _entry("locked", "use_without_pamt", KAI_BAD))
    res = shmpamt.explore(
        "locked", strategy="random", executions=1, seed=2, minimize=False, jobs=1, db=str(db)
    )
    assert res.ok and res.clean, res.summary()
    assert res.raw.regressions == ()  # nothing of locked was stored
    skipped = [n for n in res.raw.notes if "skipped" in n]
    assert len(skipped) == 1 and str(bad) in skipped[0] and "'kai'" in skipped[0]


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    """A variant file that leaves a marker when anything imports it."""
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from shmpamt.variants.locked import Locked\n\n\n"
        "class E(Locked):\n    name = 'evil'\n"
    )
    return evil, marker


def test_an_entry_never_makes_the_rig_import_a_file(tmp_path: Path) -> None:
    evil, marker = _evil(tmp_path)
    sched = f"s1:{encode_variant(f'{evil}:E')}:c2.r2.g1.p2.w1:0x30.1"
    db = tmp_path / "db"
    _put(db, "lies.json", _entry("locked", "use_without_pamt", sched))  # says it is locked
    _put(db, "own.json", _entry(f"{evil}:E", "use_without_pamt", sched))  # says what it is
    res = shmpamt.explore(
        "locked", strategy="random", executions=1, seed=2, minimize=False, jobs=1, db=str(db)
    )
    # Invariant: only the variant the user named is ever loaded.
    assert not marker.exists()
    assert res.ok and res.raw.regressions == ()
    assert [n for n in res.raw.notes if "lies.json" in n] and not [
        n for n in res.raw.notes if "own.json" in n
    ]
    # the replay step runs a schedule handed to it on the variant it is told, not on
    # the one the schedule names
    regs, failing = api.check_stored([api.Stored("use_without_pamt", sched)], variant="locked")
    assert not marker.exists() and not failing and len(regs) == 1


def test_db_variant_options_name_a_variant_file_as_the_user_does(tmp_path: Path) -> None:
    """``db list/clear --variant mine.py:Mine`` find the file's entries whether their
    schedules name it relative to where they were found or by its absolute path."""
    mine = tmp_path / "mine.py"
    mine.write_text(
        "from shmpamt.variants.locked import Locked\n\n\n"
        "class Mine(Locked):\n    name = 'mine-locked'\n"
    )
    db = tmp_path / "db"
    for name in ("mine.py:Mine", f"{mine}:Mine"):
        FailureDB(db).add("use_without_pamt", f"s1:{encode_variant(name)}:c2.r2.g1.p2.w1:0x3", "x")
    listed = _cli("db", "list", "--variant", "mine.py:Mine", "--db", str(db), cwd=tmp_path)
    assert listed.returncode == 0 and "2 failure(s)" in listed.stdout, listed.stderr
    proc = _cli("db", "clear", "--variant", "mine.py:Mine", "--yes", "--db", str(db), cwd=tmp_path)
    assert proc.returncode == 0 and "removed 2 file(s)" in proc.stdout, proc.stderr
    assert os.listdir(db / "failures") == []


# -- 5: a corrupt database -------------------------------------------------------------


def _corrupt(db: Path, outside: Path) -> dict[str, Path]:
    """One usable entry of locked and one bad file of each kind; what each is called."""
    good = _entry("locked", "use_without_pamt", "s1:locked:c2.r2.g1.p2.w1:0x30.1")
    paths = {
        "good": _put(db, "good.json", good),
        "list": _put(db, "list.json", [1, 2]),
        "deep": _put(db, "deep.json", "[" * 100_000 + "]" * 100_000),
        "truncated": _put(db, "truncated.json", '{"format": 1, "vari'),
        "kind": _put(db, "kind.json", _entry("locked", "no_such_kind", KAI_BAD)),
        "label": _put(db, "label.json", _entry("locked", "use_without_pamt", KAI_BAD)),
        "markup": _put(db, "[bold]x.json", _entry("locked", "[/nope]", KAI_BAD)),
    }
    (db / "failures" / "latin1.json").write_bytes(b'{"variant": "\xe9"}')
    paths["latin1"] = db / "failures" / "latin1.json"
    os.mkfifo(db / "failures" / "fifo.json")
    paths["fifo"] = db / "failures" / "fifo.json"
    outside.write_text(json.dumps(good))
    (db / "failures" / "link.json").symlink_to(outside)
    paths["link"] = db / "failures" / "link.json"
    return paths


def test_db_commands_skip_each_bad_file_with_one_warning_and_clear_removes_it(
    tmp_path: Path,
) -> None:
    db, outside = tmp_path / "db", tmp_path / "not-the-db.json"
    paths = _corrupt(db, outside)
    bad = [p for k, p in paths.items() if k != "good"]
    listed = _cli("db", "list", "--db", str(db), timeout=60)
    _no_traceback(listed)
    assert listed.returncode == 0, listed.stderr
    assert "1 failure(s)" in listed.stdout and "locked" in listed.stdout
    warnings = listed.stderr.splitlines()
    # Invariant: one warning per bad file, each naming it, and nothing else.
    assert len(warnings) == len(bad), warnings
    for p in bad:
        assert sum(str(p) in w for w in warnings) == 1, (p, warnings)
    key = entry_key("locked", "", "use_without_pamt", "s1:locked:c2.r2.g1.p2.w1:0x30.1")
    shown = _cli("db", "show", key[:6], "--db", str(db), timeout=60)
    _no_traceback(shown)
    assert shown.returncode == 0 and key in shown.stdout
    cleared = _cli("db", "clear", "--yes", "--db", str(db), timeout=60)
    _no_traceback(cleared)
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {len(paths)} file(s)" in cleared.stdout
    assert os.listdir(db / "failures") == []
    # Invariant: a link in the database is removed, never what it points to.
    assert json.loads(outside.read_text())["variant"] == "locked"


def test_a_search_skips_each_bad_file_once_and_still_replays_the_good_ones(
    tmp_path: Path,
) -> None:
    db, outside = tmp_path / "db", tmp_path / "not-the-db.json"
    paths = _corrupt(db, outside)
    res = shmpamt.explore(
        "locked", strategy="random", executions=1, seed=2, minimize=False, jobs=1, db=str(db)
    )
    assert res.ok and res.clean, res.summary()
    regs = res.raw.regressions
    assert regs is not None and [(r.kind, r.still_fails) for r in regs] == [
        ("use_without_pamt", False)
    ]
    for k, p in paths.items():
        said = [n for n in res.raw.notes if str(p) in n]
        assert len(said) == (0 if k == "good" else 1), (k, res.raw.notes)
    assert len(Report([res.raw]).to_dict()["variants"][0]["notes"]) == len(paths) - 1
    shown = io.StringIO()
    Report([res.raw]).render(Console(file=shown, width=200))  # the notes are not markup
    assert "[/nope]" in shown.getvalue() and "[bold]x.json" in shown.getvalue()


def test_stress_with_a_database_skips_each_bad_file_once(tmp_path: Path) -> None:
    db, outside = tmp_path / "db", tmp_path / "not-the-db.json"
    paths = _corrupt(db, outside)
    res = shmpamt.stress("locked", cpus=2, iterations=3, seed=1, db=str(db))
    assert not res.verdict, res.summary()
    for k, p in paths.items():
        said = [n for n in res.raw.notes if str(p) in n]
        assert len(said) == (0 if k == "good" else 1), (k, res.raw.notes)


def test_a_campaign_skips_each_bad_file_once(tmp_path: Path) -> None:
    db, outside = tmp_path / "db", tmp_path / "not-the-db.json"
    paths = _corrupt(db, outside)
    out = tmp_path / "c.json"
    proc = _cli(
        "campaign", "--variant", "locked", "--variant", "v6", "--strategy", "random",
        "--seeds", "1", "--executions", "2", "--workers", "1", "--db", str(db),
        "--json", str(out),
    )  # fmt: skip
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = json.loads(out.read_text())["notes"]
    for k, p in paths.items():
        assert sum(str(p) in n for n in notes) == (0 if k == "good" else 1), (k, notes)


# -- 0b: nothing outside the database, nothing through a link ----------------------------


def test_db_clear_never_follows_a_linked_failures_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.json").write_text('{"mine": true}')
    (elsewhere / "entry.json").write_text(
        json.dumps(_entry("locked", "use_without_pamt", "s1:locked:c2.r2.g1.p2.w1:0x3"))
    )
    db = tmp_path / "db"
    db.mkdir()
    (db / "failures").symlink_to(elsewhere)
    proc = _cli("db", "clear", "--yes", "--db", str(db), timeout=60)
    _no_traceback(proc)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(elsewhere)) == ["entry.json", "precious.json"]


def test_a_search_neither_reads_nor_writes_through_a_linked_failures_folder(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    db = tmp_path / "db"
    db.mkdir()
    (db / "failures").symlink_to(elsewhere)
    res = shmpamt.explore(
        "rfc-norecheck", strategy="random", executions=20, seed=1, jobs=1, db=str(db)
    )
    assert res.verdict  # the search ran and reported
    assert res.raw.regressions is None  # no regression check on a database it cannot use
    assert any("not used" in n and "symbolic link" in n for n in res.raw.notes)
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_the_json_report_is_never_written_through_a_planted_temp_name(
    tmp_path: Path, planted: str
) -> None:
    out = tmp_path / "o.json"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    tmp = tmp_path / "o.json.tmp"
    if planted == "symlink":
        tmp.symlink_to(victim)
    else:
        os.mkfifo(tmp)
    proc = _cli("replay", NORECHECK_BAD, "--json", str(out), cwd=tmp_path, timeout=120)
    _no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    assert victim.read_text() == "keep me"
    assert out.is_file() and not out.is_symlink()
    assert json.loads(out.read_text())["variants"][0]["verdict"]
    assert tmp.is_symlink() if planted == "symlink" else tmp.is_fifo()
    assert sorted(os.listdir(tmp_path)) == ["o.json", "o.json.tmp", "victim"]


def test_a_report_path_that_is_a_link_is_refused_before_the_run(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for option in ("--json", "--html"):
        link = tmp_path / f"r{option[2:]}"
        link.symlink_to(victim)
        proc = _cli("replay", NORECHECK_BAD, option, str(link), timeout=60)
        _no_traceback(proc)
        assert proc.returncode == 2 and "not a regular file" in proc.stderr
        assert victim.read_text() == "keep me"


# -- 3: a full disk ------------------------------------------------------------------------


@pytest.fixture
def private_mounts(tmp_path: Path) -> Iterator[None]:
    """Skip unless this process may mount a tmpfs in a private mount namespace."""
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        ok = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=4k tmpfs {probe}"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("unshare is not available")
    if ok.returncode != 0:
        pytest.skip("cannot mount in a private mount namespace here")
    yield


def _in_namespace(setup: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``shmpamt ARGS`` after shell ``setup``, in a private mount namespace."""
    script = f'{setup} && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *CLI, *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )


#: a 64 KiB tmpfs at ./full, filled up
FILL = (
    "mount -t tmpfs -o size=64k tmpfs full && "
    "(dd if=/dev/zero of=full/fill bs=4k 2>/dev/null; true)"
)


def test_reports_on_a_full_disk_are_one_line_each_and_leave_nothing(
    tmp_path: Path, private_mounts: None
) -> None:
    (tmp_path / "full").mkdir()
    proc = _in_namespace(
        FILL,
        "replay", NORECHECK_BAD, "--html", "full/x.html", "--json", "full/o.json",
        cwd=tmp_path,
    )  # fmt: skip
    _no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: cannot write full/x.html: No space left on device",
        "error: cannot write full/o.json: No space left on device",
    ]
    assert "1 of 1 variant(s) violate" in proc.stdout  # the report was still shown


def test_no_temp_file_survives_a_full_disk(tmp_path: Path, private_mounts: None) -> None:
    """The same run with the folder listed from inside the namespace after it."""
    (tmp_path / "full").mkdir()
    script = (
        f"{FILL} && {' '.join(CLI)} replay {NORECHECK_BAD} --json full/o.json "
        "--html full/x.html >/dev/null 2>&1; echo rc=$?; ls -A full"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.stdout.split() == ["rc=2", "fill"], proc.stdout + proc.stderr


class _FullDisk:
    """The ``os`` module as the publishing code sees it on a full disk."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _enospc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish_mod, "os", _FullDisk())


def test_a_report_that_cannot_be_written_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC simulated in-process, so it runs where no tmpfs can be mounted."""
    _enospc(monkeypatch)
    with pytest.raises(OSError, match="No space left on device") as e:
        Report().write_json(tmp_path / "o.json")
    assert ".tmp" not in str(e.value)  # the message is about the report, not a temp name
    assert os.listdir(tmp_path) == []


def test_a_database_that_cannot_be_written_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = FailureDB(tmp_path)
    _enospc(monkeypatch)
    with pytest.raises(DatabaseError, match=r"cannot be written \(No space left on device"):
        db.add("add_present", NORECHECK_BAD, "pct")
    assert os.listdir(db.dir) == []


# -- 5: a read-only database ----------------------------------------------------------


def test_a_search_on_a_read_only_database_warns_and_still_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EROFS simulated in-process (root ignores file modes): the search runs and reports
    its findings, and says once that they were not stored."""

    def read_only(*args: Any, **kwargs: Any) -> bool:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("shmpamt.records.faildb.publish", read_only)
    db = tmp_path / "db"
    res = shmpamt.explore(
        "rfc-norecheck", strategy="random", executions=20, seed=1, jobs=1, db=str(db)
    )
    assert res.verdict and res.findings
    said = [n for n in res.raw.notes if "Read-only file system" in n]
    assert len(said) == 1 and "not stored" in said[0]


def _read_only(db: Path) -> str:
    return f"mount --bind {db} {db} && mount -o remount,ro,bind {db}"


def test_explore_and_campaign_on_a_read_only_database(tmp_path: Path, private_mounts: None) -> None:
    db = tmp_path / ".shmpamt"
    (db / "failures").mkdir(parents=True)
    FailureDB(db).add("add_present", NORECHECK_BAD, "pct")
    explore = _in_namespace(
        _read_only(db),
        "explore", "--variant", "rfc-norecheck", "--strategy", "random", "--executions", "20",
        "--seed", "1", "--jobs", "1", "--json", str(tmp_path / "e.json"), "--db", str(db),
        cwd=tmp_path,
    )  # fmt: skip
    _no_traceback(explore)
    assert explore.returncode == 1, explore.stdout + explore.stderr
    variant = json.loads((tmp_path / "e.json").read_text())["variants"][0]
    assert variant["regressions"]["still_failing"] == 1  # the stored failure was replayed
    assert any("Read-only file system" in n for n in variant["notes"])
    campaign = _in_namespace(
        _read_only(db),
        "campaign", "--variant", "rfc-norecheck", "--strategy", "random", "--seeds", "1",
        "--executions", "20", "--workers", "1", "--json", str(tmp_path / "c.json"), "--db", str(db),
        cwd=tmp_path,
    )  # fmt: skip
    _no_traceback(campaign)
    assert campaign.returncode == 1, campaign.stdout + campaign.stderr
    notes = json.loads((tmp_path / "c.json").read_text())["notes"]
    assert any("Read-only file system" in n for n in notes)


# -- 6b: names and keys ------------------------------------------------------------------


def test_a_user_variant_may_not_take_a_builtin_name(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text(
        "from shmpamt.variants.locked import Locked\n\n\nclass Fake(Locked):\n    pass\n"
    )
    with pytest.raises(VariantLoadError, match="'locked', the name of a built-in"):
        load_variant(f"{fake}:Fake")
    proc = _cli("explore", "--variant", f"{fake}:Fake", "--executions", "1", timeout=60)
    _no_traceback(proc)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "name of a built-in" in proc.stderr
    load_variant("shmpamt.variants.locked:Locked")  # the built-in itself, by module path


def test_a_user_c_file_may_not_take_a_twin_name(tmp_path: Path) -> None:
    twins = Path(shmpamt.__file__).parent / "variants" / "c"
    for name in ("rfc.c", "common.h"):
        shutil.copy(twins / name, tmp_path / name)
    with pytest.raises(VariantLoadError, match=r"'rfc\.c', the name of a built-in"):
        load_variant(str(tmp_path / "rfc.c"))
    (tmp_path / "rfc.c").rename(tmp_path / "my-rfc.c")
    assert load_variant(str(tmp_path / "my-rfc.c")).name == "my-rfc.c"
    assert load_variant("rfc.c").name == "rfc.c"


def test_db_clear_key_removes_an_entry_whatever_its_file_is_called(tmp_path: Path) -> None:
    db = tmp_path / "db"
    sched = "s1:locked:c2.r2.g1.p2.w1:0x3"
    _put(db, "renamed.json", _entry("locked", "add_present", sched))
    key = entry_key("locked", "", "add_present", sched)
    proc = _cli("db", "clear", key[:8], "--yes", "--db", str(db), timeout=60)
    _no_traceback(proc)
    assert proc.returncode == 0 and "removed 1 file(s)" in proc.stdout, proc.stderr
    assert os.listdir(db / "failures") == []
    _put(db, "renamed.json", _entry("locked", "add_present", sched))
    assert FailureDB(db).clear(variant="locked") == 1
    assert os.listdir(db / "failures") == []


def _two_sharing_a_prefix() -> tuple[str, str, str]:
    """Two schedules of locked whose entry keys share their first 4 digits."""
    seen: dict[str, str] = {}
    for seed in range(1_000_000):
        sched = f"s1:locked:c2.r2.g1.p2.w{seed}:0x3"
        prefix = entry_key("locked", "", "add_present", sched)[:4]
        if prefix in seen:
            return prefix, seen[prefix], sched
        seen[prefix] = sched
    raise AssertionError("no two keys share a prefix")


def test_an_ambiguous_key_prefix_says_so_and_lists_the_candidates(tmp_path: Path) -> None:
    prefix, a, b = _two_sharing_a_prefix()
    db = tmp_path / "db"
    for s in (a, b):
        FailureDB(db).add("add_present", s, "pct")
    keys = [entry_key("locked", "", "add_present", s) for s in (a, b)]
    for cmd in (["db", "show", prefix], ["db", "clear", prefix, "--yes"]):
        proc = _cli(*cmd, "--db", str(db), timeout=60)
        _no_traceback(proc)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
        assert "ambiguous" in proc.stderr and all(k in proc.stderr for k in keys)
    assert len(FailureDB(db).entries()) == 2  # nothing removed on an ambiguous key
