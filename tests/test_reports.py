"""Reports never overstate: ok/clean/check see incidents and ignored kinds, counts and
steps agree everywhere, the table reads at 80 columns, and a run ends with a next step."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rich.console import Console

import shmpamt.api as api
from shmpamt.records.violations import VIOLATIONS
from shmpamt.report.terminal import Report

HERE = Path(__file__).resolve().parent
VARIANTS = HERE / "report_variants.py"


def test_an_incident_is_never_ok_and_check_names_it() -> None:
    r = api.stress(f"{VARIANTS}:PutRaises", cpus=2, ranges=1, iterations=20, seed=1)
    assert r.incidents, r.to_dict()
    assert not r.ok and not r.clean
    with pytest.raises(api.ViolationFound) as info:
        r.check()
    assert "incident" in str(info.value) and "put exploded" in str(info.value)


def test_a_cpu_that_exits_quietly_is_an_incident_not_clean() -> None:
    r = api.stress(f"{VARIANTS}:GetExits", cpus=2, ranges=1, iterations=20, seed=1)
    assert r.incidents and not r.ok and not r.clean, r.to_dict()
    assert r.raw.verdict == "incident"


def test_ignored_kinds_are_reported_never_clean() -> None:
    ignore = {"add_present", "remove_absent"}
    r = api.explore("rfc", ignore=ignore, executions=60, seed=3, minimize=False)
    seen = set(r.found)
    assert seen and seen <= ignore, r.to_dict()  # rfc shows only these in this scenario
    assert r.ok and not r.clean and r.raw.verdict == "ignored"
    d = r.to_dict()
    assert d["ignored"] == sorted(ignore) and set(d["ignored_seen"]) == seen
    assert d["ignored_only_executions"] > 0 and d["result"] == "ignored"
    text = _render(Report(results=[r.raw]), 80)
    assert "clean" not in text.split("verdict")[1].splitlines()[3]  # the variant's row
    assert "ignored" in text


def test_stress_takes_ignore_with_the_same_meaning() -> None:
    # One start for the whole run (epoch=0): a fresh start removes the PAMT the variant
    # leaves behind, and on a slow machine one could come between every two rounds.
    r = api.stress(
        f"{VARIANTS}:NeverRemoves",
        ignore={"add_present"},
        cpus=2,
        ranges=1,
        iterations=50,
        seed=2,
        epoch=0,
    )
    # add_present is counted and named, but only quiescent_mismatch makes the verdict
    assert {"add_present", "quiescent_mismatch"} <= r.found, r.to_dict()
    assert "add_present" not in r.verdict and "quiescent_mismatch" in r.verdict
    assert r.to_dict()["ignored"] == ["add_present"]


def test_steps_and_preemptions_agree_with_the_timeline_and_the_bound() -> None:
    r = api.explore("rfc-norecheck", strategy="dfs", preemptions=2, executions=400, seed=0)
    assert r.findings
    for f in r.findings:
        assert f.execution is not None
        # Invariant: the numbers a finding states are those of the execution it shows.
        assert f.steps == len(f.execution.steps) == len(f.execution.trace)
        assert f.preemptions == f.execution.preemptions()
        assert f.preemptions <= 2  # minimising never adds preemptions beyond the bound
        assert r.to_dict()["schedules"][r.findings.index(f)]["steps"] == f.steps


@pytest.mark.parametrize("width", [80, 120])
def test_the_verdict_table_reads_at_80_and_120_columns(width: int) -> None:
    from shmpamt.records.results import STRESS, VariantResult

    counts = dict.fromkeys(VIOLATIONS, 0) | {n: 1234 for n in VIOLATIONS}
    results = [
        VariantResult("rfc-leak-on-lost-race", STRESS, 1, 4, 10**6, 7.0, counts, {}),
        VariantResult("locked", STRESS, 1, 4, 10**6, 7.0, dict.fromkeys(VIOLATIONS, 0), {}),
    ]
    text = _render(Report(results=results), width)
    assert max(len(line) for line in text.splitlines()) <= width
    # every kind is named in full, and no header is cut to an ellipsis
    for name in VIOLATIONS:
        assert name in text.replace("\n", " ").replace("│", " ").replace(" ", "") or name in text
    assert "…" not in text
    assert "rfc-leak-on-lost-race" in text and "clean" in text


def test_a_campaign_ends_with_its_next_steps() -> None:
    from shmpamt.records.results import STRESS, VariantResult

    bad = dict.fromkeys(VIOLATIONS, 0) | {"remove_absent": 3}
    results = [
        VariantResult("rfc", STRESS, 7, 4, 100, 7.0, bad, {}, spec="rfc"),
        VariantResult("v6", STRESS, 7, 4, 100, 7.0, dict.fromkeys(VIOLATIONS, 0), {}),
    ]
    text = _render(Report(results=results, rerun="shmpamt stress --seed 7"), 120)
    assert "verdict: violations found" in text
    assert "1 of 2 variant(s) violate; clean: v6" in text
    assert "exit status 1: violations found" in text
    assert "shmpamt stress --seed 7" in text
    assert "shmpamt explore --variant rfc" in text
    clean = _render(Report(results=results[1:]), 120)
    assert "violations found" not in clean and "no violation found" in clean


def _render(c: Report, width: int) -> str:
    out = io.StringIO()
    c.render(Console(file=out, width=width, color_system=None))
    return out.getvalue()


def test_a_replay_string_works_from_any_directory_and_notes_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine's index of variant files is this test's own (the CLIs inherit it):
    # an old copy of the file elsewhere would otherwise be replayed, with a note.
    monkeypatch.setenv("SHMPAMT_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "mine.py"
    shutil.copy(VARIANTS, src)
    # A source of its own: copies left by earlier runs (kept by pytest) must not match it
    # in the recorded-paths index, or the replay would rightly take one of those instead.
    src.write_text(src.read_text() + f"\n# run {uuid.uuid4().hex}\n")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        found = api.explore("mine.py:Slip", executions=200, seed=1, first=True)
    finally:
        os.chdir(cwd)
    assert found.findings, found.to_dict()
    text = found.findings[0].schedule
    assert ".h" in text.split(":")[2]  # the source hash rides in the scenario field
    elsewhere = _cli(["replay", text, "--json", str(tmp_path / "r.json")], cwd="/")
    assert elsewhere.returncode == 1, elsewhere.stdout + elsewhere.stderr
    src.write_text(src.read_text() + "\n# edited\n")
    changed = _cli(["replay", text], cwd="/")
    assert "changed since this schedule was recorded" in " ".join(changed.stdout.split())
    src.unlink()
    gone = _cli(["replay", text], cwd="/")
    assert gone.returncode == 2 and str(src) in gone.stderr and "Traceback" not in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def _cli(args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmpamt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_usage_errors_are_one_line_on_stderr_and_help_says_the_exit_codes() -> None:
    r = _cli(["stress", "--cpus", "many"], cwd=str(HERE))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == ""
    h = _cli(["--help"], cwd=str(HERE))
    assert "Exit status" in h.stdout and "130" in h.stdout and "_SHMPAMT_COMPLETE" in h.stdout
    s = _cli(["stress", "--help"], cwd=str(HERE))
    assert "CPU processes" in s.stdout and "default 7" in s.stdout


def test_json_report_records_what_was_ignored(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = _cli(
        ["explore", "--variant", "rfc", "--ignore", "add_present", "--ignore", "remove_absent",
         "--executions", "60", "--seed", "3", "--no-minimize", "--json", str(out)],
        cwd=str(HERE),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    v = json.loads(out.read_text())["variants"][0]
    assert v["result"] == "ignored" and v["ignored"] == ["add_present", "remove_absent"]
    assert "verdict: no violation found" in r.stdout and "ignored only" in r.stdout


def test_a_script_without_a_main_guard_gets_one_clear_error(tmp_path: Path) -> None:
    bare = tmp_path / "bare.py"
    bare.write_text('import shmpamt\nshmpamt.explore("locked", executions=3)\n')
    r = subprocess.run([sys.executable, str(bare)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("shmpamt.errors.UsageError: bare.py runs shmpamt at import time")
    assert 'if __name__ == "__main__":' in last
    assert "bootstrapping" not in r.stderr and "ModuleStartError" not in r.stderr
    guarded = tmp_path / "guarded.py"
    guarded.write_text(
        'import shmpamt\n\nif __name__ == "__main__":\n'
        '    print(shmpamt.explore("locked", executions=3).ok)\n'
    )
    ok = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == "True", ok.stderr


def test_the_library_example_in_the_docs_runs_as_a_script(tmp_path: Path) -> None:
    doc = (HERE.parent / "docs" / "library.md").read_text()
    section = doc.split("## The public API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    # the example ends with check() on a racy variant: ViolationFound, after the replays agreed
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ViolationFound" in r.stderr and "shmpamt replay s1:rfc-norecheck" in r.stderr
    assert "AssertionError" not in r.stderr.replace("ViolationFound", "")  # no failed assert
