"""The default search covers error paths: each variant of tests/error_path_variants.py is
v6 but for one slip after a refused SEAMCALL or a failed allocation; default
``shmpamt explore`` reports the kind only that slip causes, tagged with the fault it
needed, and the printed replay command reproduces it from another directory."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from cli_run import cli_env, shmpamt_cli

HERE = Path(__file__).resolve().parent
_COMMAND = re.compile(r"^\s+\S+ (\w+): (shmpamt replay \S+)$", re.M)


def _shmpamt(args: list[str], cwd: Path, cache: Path) -> tuple[int, str]:
    # The timeline's cells unwrapped.
    p = shmpamt_cli(args, cwd=cwd, env=cli_env(cache, columns=250), timeout=600)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize(
    ("cls", "kind", "fault"),
    [
        ("AddResultIgnored", "use_without_pamt", "add.busy"),
        ("RemoveFailureWarnsOnly", "add_present", "remove.busy"),
        ("AddFailureLeaksPages", "pamt_pages_lost", "add.busy"),
        ("SecondPageLeaks", "pamt_pages_lost", "alloc.fail"),
    ],
)
def test_default_explore_finds_the_error_path_slip_and_its_replay_reproduces_it(
    tmp_path: Path, cls: str, kind: str, fault: str
) -> None:
    work, elsewhere, cache = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "cache"
    for d in (work, elsewhere, cache):
        d.mkdir()
    shutil.copy(HERE / "error_path_variants.py", work / "slips.py")
    code, out = _shmpamt(
        ["explore", "--variant", f"slips.py:{cls}", "--db", "off", "--seed", "1"], work, cache
    )
    assert code == 1, out
    commands = dict(_COMMAND.findall(out))
    assert kind in commands, out
    assert f"[fault: {fault}]" in out, out
    code, replayed = _shmpamt(commands[kind].split()[1:], elsewhere, cache)
    assert code == 1, replayed
    assert kind in replayed and f"injected {fault}" in replayed, replayed


def test_the_same_slips_are_clean_without_faults(tmp_path: Path) -> None:
    """--faults none is the happy-path search: none of the slips is reached."""
    shutil.copy(HERE / "error_path_variants.py", tmp_path / "slips.py")
    args = ["explore", "--variant", "slips.py:RemoveFailureWarnsOnly", "--strategy", "dpor"]
    args += ["--rounds", "1", "--faults", "none", "--db", "off", "--jobs", "1"]
    code, out = _shmpamt(args, tmp_path, tmp_path)
    assert code == 0, out
    assert "verified" in out
