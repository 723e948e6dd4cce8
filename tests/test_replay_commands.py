"""Replay commands paste: never wrapped or cut at any width, tty or not, and a user
file's short replay string replays from any directory (docs/library.md, item 4)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from cli_run import cli_env, shmpamt_cli

from shmpamt.records.schedule_string import Schedule
from shmpamt.records.variant_files import file_hash, locate, remember, short_spec

# The schedules here were recorded against the one-step module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_step_module")

USER_VARIANT = '''
from shmpamt.variants.rfc import Rfc


class Mine(Rfc):
    """The RFC as posted, as a user's own file."""

    name = "mine"
'''
EXPLORE = ["explore", "--variant", "mine.py:Mine", "--executions", "60", "--seed", "1"]
EXPLORE += ["--jobs", "1", "--db", "off"]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
#: a printed command runs to the end of its line
_COMMAND = re.compile(r"(?:^|\s)(shmpamt replay .*)$")


def _env(cache: Path, columns: int | None) -> dict[str, str]:
    return cli_env(cache, columns)


def _piped(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    p = shmpamt_cli(args, cwd=cwd, env=env, timeout=180)
    return p.returncode, p.stdout + p.stderr


def _on_tty(args: list[str], cwd: Path, env: dict[str, str], columns: int) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal of ``columns`` columns, as a user's shell."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpamt", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=180)
    return code, b"".join(chunks).decode("utf-8", "replace")


def _lines(raw: str) -> list[str]:
    """What a reader copies: the text without colours, one logical line each."""
    text = _ANSI.sub("", raw).replace("\r\n", "\n")
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def _commands(lines: list[str]) -> list[tuple[str, str]]:
    """(kind, command) of every printed replay command, copied from its line."""
    out = []
    for line in lines:
        m = _COMMAND.search(line)
        if m is not None:
            kind = line[: m.start(1)].strip().rstrip(":").split()[-1]
            out.append((kind, m.group(1).rstrip()))
    return out


@pytest.fixture(scope="module")
def made_here(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("work")
    (home / "mine.py").write_text(USER_VARIANT)
    return home


def test_replay_commands_paste_at_any_width_and_replay_from_elsewhere(
    made_here: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed: dict[tuple[int, bool], list[tuple[str, str]]] = {}
    for columns in (40, 80, 200):
        for tty in (False, True):
            if tty:
                code, raw = _on_tty(EXPLORE, made_here, _env(cache, None), columns)
            else:
                code, raw = _piped(EXPLORE, made_here, _env(cache, columns))
            assert code == 1, raw
            lines = _lines(raw)
            # Invariant: the report was laid out this wide (its tables fit the width).
            tables = [line for line in lines if line.startswith(("┏", "┃", "│", "└"))]
            assert tables and max(map(len, tables)) <= columns, raw
            cmds = _commands(lines)
            assert {k for k, _ in cmds} >= {"remove_absent", "add_present"}, raw
            for _, cmd in cmds:
                schedule = shlex.split(cmd)[2]
                Schedule.parse(schedule)  # whole: it parses
                assert schedule.startswith("s1:mine.2epy.3aMine:"), cmd  # short: relative
            rerun = [line for line in lines if line.startswith("rerun this campaign: shmpamt ")]
            assert rerun and rerun[0].endswith("--db off"), raw
            printed[columns, tty] = cmds
    # Every width, tty or not, printed the same commands: each copy is the whole command.
    assert len({tuple(cmds) for cmds in printed.values()}) == 1, printed
    for i, (kind, cmd) in enumerate(dict.fromkeys(printed[40, True])):
        report = tmp_path / f"replay{i}.json"
        args = [*shlex.split(cmd)[1:], "--json", str(report)]
        code, out = _piped(args, elsewhere, _env(cache, None))
        assert code == 1, out
        assert kind in json.loads(report.read_text())["variants"][0]["verdict"], out
        assert f"is not here: replaying {made_here / 'mine.py'}" in " ".join(out.split()), out


def test_a_relative_name_resolves_here_first_then_where_it_was_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMPAMT_CACHE_DIR", str(tmp_path / "cache"))
    made = tmp_path / "made"
    other = tmp_path / "other"
    made.mkdir()
    other.mkdir()
    src = made / "mine.py"
    src.write_text(USER_VARIANT)
    monkeypatch.chdir(made)
    spec = f"{src}:Mine"
    assert short_spec(spec) == "mine.py:Mine"
    source = file_hash(str(src))
    assert locate("mine.py:Mine", source).spec == spec  # here, as named
    monkeypatch.chdir(other)
    # Not recorded yet: nowhere to be found from here.
    assert locate("mine.py:Mine", source).spec is None
    remember(spec)
    got = locate("mine.py:Mine", source)
    assert got.spec == spec and "is not here" in got.note
    # A file of the same name here with other source: the recorded one wins, said so.
    (other / "mine.py").write_text(USER_VARIANT + "\n# another\n")
    got = locate("mine.py:Mine", source)
    assert got.spec == spec and "has other source" in got.note
    # The recorded file edited: the one here runs, with the changed-source note.
    src.write_text(USER_VARIANT + "\n# edited\n")
    got = locate("mine.py:Mine", source)
    assert got.spec == f"{other / 'mine.py'}:Mine" and "changed since" in got.note


def test_an_old_absolute_schedule_string_still_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHMPAMT_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "mine.py"
    src.write_text(USER_VARIANT)
    old = Schedule(f"{src}:Mine", 2, 2, 1, 2, 1, (0,) * 30 + (1,), file_hash(str(src)))
    assert old.encode().startswith("s1:.2f")  # an absolute path, as strings used to be
    monkeypatch.chdir("/")
    code, out = _piped(["replay", old.encode()], Path("/"), _env(tmp_path / "cache", None))
    assert code == 1 and "remove_absent" in out, out


def test_stored_failures_of_a_variant_file_are_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shmpamt.api import stored_entries
    from shmpamt.records.faildb import FailureDB

    monkeypatch.setenv("SHMPAMT_CACHE_DIR", str(tmp_path / "cache"))
    made = tmp_path / "made"
    made.mkdir()
    src = made / "mine.py"
    src.write_text(USER_VARIANT)
    spec = f"{src}:Mine"
    monkeypatch.chdir(made)
    short = Schedule(short_spec(spec), 2, 2, 1, 2, 1, (0, 1), file_hash(str(src)))
    db = FailureDB(tmp_path / "db")
    db.add("remove_absent", short.encode(), "dpor")
    db.add("use_without_pamt", "s1:kai:c2.r2.g1.p2.w1:0", "dpor")
    remember(spec)
    monkeypatch.chdir(tmp_path)  # mine.py is not here: found where it was recorded
    assert [e.kind for e in stored_entries(db, spec)] == ["remove_absent"]
    assert [e.kind for e in stored_entries(db, "kai")] == ["use_without_pamt"]
    other = tmp_path / "other.py"
    other.write_text(USER_VARIANT + "\n# another file\n")
    assert stored_entries(db, f"{other}:Mine") == []


def test_a_fixed_file_is_checked_against_its_stored_failures_not_an_old_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shmpamt.api import Stored, check_stored, stored_entries
    from shmpamt.records.faildb import FailureDB

    monkeypatch.setenv("SHMPAMT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    src, copy = tmp_path / "mine.py", tmp_path / "backup" / "mine.py"
    copy.parent.mkdir()
    for f in (src, copy):
        f.write_text(USER_VARIANT)
        remember(f"{f}:Mine")
    found = Schedule("mine.py:Mine", 2, 2, 1, 2, 1, (0,) * 30 + (1,), file_hash(str(src)))
    db = FailureDB(tmp_path / "db")
    db.add("remove_absent", found.encode(), "dpor")
    # The fix: mine.py becomes the locked variant. Its old source lives on in the copy.
    src.write_text(USER_VARIANT.replace("variants.rfc import Rfc", "variants.locked import Locked"))
    src.write_text(src.read_text().replace("(Rfc)", "(Locked)"))
    spec = f"{src}:Mine"
    (entry,) = stored_entries(db, spec)  # still the file's failure, edited or not
    assert locate(entry.variant, entry.source).spec == f"{copy}:Mine"  # a plain replay
    regs, _ = check_stored([Stored(entry.kind, entry.schedule)], variant=spec)
    # Invariant: the check ran on the fixed file, so the stored race is gone.
    assert [r.still_fails for r in regs] == [False], regs
    regs, _ = check_stored([Stored(entry.kind, entry.schedule)])
    assert [r.still_fails for r in regs] == [True], regs  # the copy still has the bug
