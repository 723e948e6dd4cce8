"""Bad input: every command answers a bad value with one clear line and exit status 2,
before any process starts, never a traceback or a hang; the library says it with one
ValueError/TypeError; a property test throws junk at every parser.

Most cases run the click command in-process (``CliRunner``) with ``System.start``
replaced by a tripwire: a bad value that validation lets through reaches the tripwire
instead of spawning a run, and the test says so. A few cases run ``python -m shmpamt``
for real, to check what a user sees end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

import shmpamt.api as api
from shmpamt.cli import common
from shmpamt.cli.app import main
from shmpamt.machine.ipc import parse_name
from shmpamt.module.faults import FaultPlan
from shmpamt.records.schedule_string import Schedule, ScheduleError, encode_variant
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.registry import VariantLoadError, load_variant

GOOD = (
    "s1:rfc:c2.r2.g1.p2.w1:0x3"  # a well-formed schedule, used where the schedule is not the point
)


class WouldSpawn(BaseException):
    """Raised instead of starting a system: validation let the arguments through.

    A BaseException so that the CLI's own error handling (which turns any Exception
    into an exit-2 report line) cannot disguise an accepted bad value as a refusal."""


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """No in-process invocation may create IPC objects or processes."""
    from shmpamt.engine.system import System

    seen: list[object] = []

    def refuse(*args: object, **kw: object) -> System:
        seen.append(args)
        raise WouldSpawn(repr(args)[:200])

    monkeypatch.setattr(System, "start", refuse)
    # With --jobs > 1 (the default outside xdist) explore spawns job processes, in
    # which this patch does not hold: refuse those too.
    from shmpamt.explorer import jobs

    monkeypatch.setattr(jobs, "_run_jobs", refuse)
    # The module-level console measured its width at import (80 without a terminal);
    # wrapping is the subject of its own test below, not of every case.
    monkeypatch.setattr(common, "err_console", Console(stderr=True, width=10_000))
    yield seen


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("variants")
    (d / "raises.py").write_text("raise RuntimeError('boom at import')\n")
    (d / "syntax.py").write_text("def broken(:\n")
    (d / "empty.py").write_text("X = 1\n")
    return {
        "{raises}": f"{d / 'raises.py'}:Anything",
        "{syntax}": f"{d / 'syntax.py'}:Anything",
        "{noclass}": f"{d / 'empty.py'}:Missing",
        "{notvariant}": f"{d / 'empty.py'}:X",
        "{missing}": f"{d / 'missing.py'}:Anything",
        "{nodir}": str(d / "no" / "such" / "folder" / "r.json"),
        "{dir}": str(d),
        "{raises_in_schedule}": encode_variant(f"{d / 'raises.py'}:Anything"),
    }


def _clear_lines(text: str) -> list[str]:
    """The lines that carry a message: click's usage/hint lines frame its one Error line."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith("Usage:") and not line.startswith("Try '")
    ]


def _invoke(args: list[str]) -> tuple[int, str]:
    runner = CliRunner(env={"COLUMNS": "1000"})
    try:
        r = runner.invoke(main, args, catch_exceptions=False)
    except WouldSpawn as e:
        raise AssertionError(f"{args}: accepted, a run would start with {e}") from None
    return r.exit_code, r.stderr


# (command line, a word the one line must contain)
BAD: list[tuple[list[str], str]] = [
    # stress: counts and ranges
    (["stress", "--cpus", "0"], "--cpus"),
    (["stress", "--cpus", "-3"], "--cpus"),
    (["stress", "--cpus", "65"], "--cpus"),
    (["stress", "--cpus", "four"], "--cpus"),
    (["stress", "--ranges", "0"], "--ranges"),
    (["stress", "--ranges", "-1"], "--ranges"),
    (["stress", "--pages-per-range", "0"], "--pages-per-range"),
    (["stress", "--pages-per-range", "513"], "--pages-per-range"),
    (["stress", "--cpus", "4", "--pages-per-range", "3"], "--pages-per-range"),
    (["stress", "--hot", "-0.1"], "--hot"),
    (["stress", "--hot", "1.5"], "--hot"),
    (["stress", "--hot", "nan"], "--hot"),
    (["stress", "--hold-us", "-1"], "--hold-us"),
    (["stress", "--duration", "-1"], "--duration"),
    (["stress", "--duration", "0"], "--duration"),
    (["stress", "--duration", "inf"], "--duration"),
    (["stress", "--iterations", "0"], "--iterations"),
    (["stress", "--iterations", "-5"], "--iterations"),
    (["stress", "--duration", "1", "--iterations", "5"], "not both"),
    (["stress", "--seed", "-1"], "--seed"),
    (["stress", "--seed", str(2**63)], "--seed"),
    (["stress", "--chaos", "2"], "--chaos"),
    (["stress", "--chaos", "nan"], "--chaos"),
    # stress: fault specs
    (["stress", "--faults", "garbage"], "--faults"),
    (["stress", "--faults", "add.busy=2"], "outside"),
    (["stress", "--faults", "add.busy=-0.5"], "outside"),
    (["stress", "--faults", "add.busy=nan"], "finite"),
    (["stress", "--faults", "aug.delay=0.1"], "probability:max_seconds"),
    (["stress", "--faults", "aug.delay=0.1:-1"], "negative"),
    (["stress", "--faults", "alloc.busy=0.1"], "alloc"),
    (["stress", "--faults", "nosuchleaf.busy=0.1"], "--faults"),
    (["stress", "--faults", "add.explode=0.1"], "--faults"),
    # stress: variants
    (["stress", "--variant", "nosuch"], "unknown variant"),
    (["stress", "--variant", "{raises}"], "boom at import"),
    (["stress", "--variant", "{syntax}"], "importing it raised"),
    (["stress", "--variant", "{noclass}"], "Missing"),
    (["stress", "--variant", "{notvariant}"], "X"),
    (["stress", "--variant", "{missing}"], "does not exist"),
    (["stress", "--variant", "locked", "--variant", "{raises}"], "boom at import"),
    # stress: report path
    (["stress", "--json", "{nodir}"], "does not exist"),
    (["stress", "--json", "{dir}"], "is a folder"),
    # explore
    (["explore"], "--variant"),
    (["explore", "--variant", "nosuch"], "unknown variant"),
    (["explore", "--variant", "{raises}"], "boom at import"),
    (["explore", "--variant", "{missing}"], "does not exist"),
    (["explore", "--variant", "rfc", "--cpus", "0"], "--cpus"),
    (["explore", "--variant", "rfc", "--cpus", "9"], "--cpus"),
    (["explore", "--variant", "rfc", "--rounds", "0"], "--rounds"),
    (["explore", "--variant", "rfc", "--ranges", "-2"], "--ranges"),
    (["explore", "--variant", "rfc", "--depth", "0"], "--depth"),
    (["explore", "--variant", "rfc", "--preemptions", "-1"], "--preemptions"),
    (["explore", "--variant", "rfc", "--budget", "-1"], "--budget"),
    (["explore", "--variant", "rfc", "--executions", "0"], "--executions"),
    (["explore", "--variant", "rfc", "--strategy", "bogus"], "--strategy"),
    (["explore", "--variant", "rfc", "--seed", "-2"], "--seed"),
    (["explore", "--variant", "rfc", "--ignore", "no_such_violation"], "--ignore"),
    (["explore", "--variant", "rfc", "--json", "{nodir}"], "does not exist"),
    (["explore", "--variant", "rfc", "--html", "{nodir}"], "does not exist"),
    # explore: faults as choices
    (["explore", "--variant", "rfc", "--faults", "add.slow=0.1"], "unknown kind"),
    (["explore", "--variant", "rfc", "--faults", "nosuchleaf.busy=0.1"], "unknown leaf"),
    (["explore", "--variant", "rfc", "--faults", "add.busy=1.5"], "outside"),
    (["explore", "--variant", "rfc", "--faults", "alloc.fail=-0.1"], "outside"),
    (["explore", "--variant", "rfc", "--faults", "add.busy=nan"], "finite"),
    (["explore", "--variant", "rfc", "--faults", "aug.delay=0.1:0.01"], "not delays"),
    (["explore", "--variant", "rfc", "--max-faults", "-1"], "--max-faults"),
    (["explore", "--variant", "rfc", "--max-faults", "9"], "--max-faults"),
    (["explore", "--variant", "rfc", "--max-faults", "1000000"], "--max-faults"),
    (["replay", "s2:rfc:c2.r2.g1.p2.w1:0x3:0p1x"], "bad schedule"),
    (["replay", "s2:rfc:c2.r2.g1.p2.w1:0x3:5p1a"], "bad schedule"),
    # replay
    (["replay"], "SCHEDULE"),
    (["replay", ""], "bad schedule"),
    (["replay", "garbage"], "bad schedule"),
    (["replay", "s9:rfc:c2.r2.g1.p2.w1:0x3"], "bad schedule"),
    (["replay", "s1:rfc:c2.r2.g1.p2.w1:2x3"], "bad schedule"),
    (["replay", "s1:rfc:c2.r2.g1.p2.w1:0x0"], "bad schedule"),
    (["replay", "s1:rfc:c0.r2.g1.p2.w1:"], "bad schedule"),
    (["replay", "s1:nosuch:c2.r2.g1.p2.w1:0x3"], "unknown variant"),
    (["replay", "s1:{raises_in_schedule}:c2.r2.g1.p2.w1:0x3"], "boom at import"),
    # well-formed, the variant exists, but the scenario cannot be set up
    (["replay", "s1:rfc:c2.r2.g1.p1.w1:0x3"], "does not fit"),
    (["replay", "s1:locked:c9.r2.g1.p9.w1:0x3"], "does not fit"),
    (["replay", "s1:locked:c2.r2.g65.p2.w1:0x3"], "does not fit"),
    (["replay", GOOD, "--times", "0"], "--times"),
    (["replay", GOOD, "--json", "{nodir}"], "does not exist"),
    (["replay", GOOD, "--html", "{nodir}"], "does not exist"),
    # clean, variants, the group
    (["clean", "--bogus"], "--bogus"),
    (["clean", "extra"], "extra"),
    (["variants", "--bogus"], "--bogus"),
    (["variants", "extra"], "extra"),
    (["nosuchcommand"], "nosuchcommand"),
]


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for key, value in files.items():
            a = a.replace(key, value)
        out.append(a)
    return out


def _check_refusal(code: int, stderr: str, word: str, what: object) -> None:
    assert code == 2, (what, code, stderr)
    assert "Traceback" not in stderr, stderr
    lines = _clear_lines(stderr)
    # Invariant: a refusal is exactly one line that names what was wrong.
    assert len(lines) == 1, (what, stderr)
    assert word.lower() in lines[0].lower(), (what, lines[0])


@pytest.mark.parametrize(("args", "word"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_value_is_one_line_and_exit_2_before_any_process(
    tripwire: list[object], variant_files: dict[str, str], args: list[str], word: str
) -> None:
    code, stderr = _invoke(_fill(args, variant_files))
    _check_refusal(code, stderr, word, args)
    assert tripwire == []


def test_nan_duration_is_refused(tripwire: list[object]) -> None:
    code, stderr = _invoke(["stress", "--variant", "locked", "--duration", "nan"])
    _check_refusal(code, stderr, "--duration", "nan")


def test_nan_budget_is_refused(tripwire: list[object]) -> None:
    code, stderr = _invoke(["explore", "--variant", "locked", "--budget", "nan"])
    _check_refusal(code, stderr, "--budget", "nan")


# --- end to end: a real process, what a user sees -------------------------------------


def _objects_of(pid: int) -> list[str]:
    return [e for e in os.listdir("/dev/shm") if (p := parse_name(e)) is not None and p.pid == pid]


def _run_cli(args: list[str], columns: int = 1000) -> tuple[int, str]:
    """Run ``python -m shmpamt``; fail at once if it starts a run (creates IPC objects)."""
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpamt", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    started = False
    while proc.poll() is None and time.monotonic() < deadline:
        if _objects_of(proc.pid):
            started = True
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: the CLI stops its run and removes every object
    _, stderr = proc.communicate(timeout=60)
    assert not started, f"{args}: accepted, a run started"
    assert time.monotonic() < deadline, f"{args}: hung"
    return proc.returncode, stderr


E2E: list[tuple[list[str], str]] = [
    (["stress", "--cpus", "0"], "--cpus"),
    (["stress", "--cpus", "4", "--pages-per-range", "2"], "--pages-per-range"),
    (["stress", "--duration", "1", "--iterations", "5"], "not both"),
    (["stress", "--faults", "add.busy=nope"], "--faults"),
    (["stress", "--variant", "{raises}"], "boom at import"),
    (["explore", "--variant", "{missing}"], "does not exist"),
    (["replay", "s1:rfc:c2.r2.g1.p2"], "bad schedule"),
    (["replay", GOOD, "--json", "{nodir}"], "does not exist"),
]


@pytest.mark.parametrize(("args", "word"), E2E, ids=[" ".join(a) for a, _ in E2E])
def test_command_line_refusal_end_to_end(
    variant_files: dict[str, str], args: list[str], word: str
) -> None:
    code, stderr = _run_cli(_fill(args, variant_files))
    _check_refusal(code, stderr, word, args)


def test_a_long_error_stays_one_line_on_a_narrow_terminal() -> None:
    code, stderr = _run_cli(["stress", "--cpus", "4", "--pages-per-range", "2"], columns=80)
    _check_refusal(code, stderr, "--pages-per-range", "narrow")


# --- the library entry points ----------------------------------------------------------

API_BAD: list[tuple[str, dict[str, object], type[Exception], str]] = [
    ("stress", {"cpus": 0}, ValueError, "cpus"),
    ("stress", {"cpus": -1}, ValueError, "cpus"),
    ("stress", {"cpus": 4.0}, TypeError, "cpus"),
    ("stress", {"cpus": True}, TypeError, "cpus"),
    ("stress", {"ranges": 0}, ValueError, "ranges"),
    ("stress", {"cpus": 4, "pages_per_range": 3}, ValueError, "pages_per_range"),
    ("stress", {"pages_per_range": 0}, ValueError, "pages_per_range"),
    ("stress", {"duration": -1.0}, ValueError, "duration"),
    ("stress", {"duration": 0}, ValueError, "duration"),
    ("stress", {"duration": float("nan")}, ValueError, "duration"),
    ("stress", {"duration": float("inf")}, ValueError, "duration"),
    ("stress", {"duration": "3"}, TypeError, "duration"),
    ("stress", {"iterations": 0}, ValueError, "iterations"),
    ("stress", {"iterations": -3}, ValueError, "iterations"),
    ("stress", {"duration": 1.0, "iterations": 5}, ValueError, "not both"),
    ("stress", {"seed": -1}, ValueError, "seed"),
    ("stress", {"chaos": 1.5}, ValueError, "chaos"),
    ("stress", {"hot": float("nan")}, ValueError, "hot"),
    ("stress", {"hold_us": -1}, ValueError, "hold_us"),
    ("stress", {"faults": "garbage"}, ValueError, "garbage"),
    ("stress", {"faults": None}, TypeError, "faults"),
    ("explore", {"cpus": 0}, ValueError, "cpus"),
    ("explore", {"cpus": 9}, ValueError, "cpus"),
    ("explore", {"rounds": 0}, ValueError, "rounds"),
    ("explore", {"ranges": 0}, ValueError, "ranges"),
    ("explore", {"depth": 0}, ValueError, "depth"),
    ("explore", {"preemptions": -1}, ValueError, "preemptions"),
    ("explore", {"budget": -1.0}, ValueError, "budget"),
    ("explore", {"budget": float("nan")}, ValueError, "budget"),
    ("explore", {"executions": 0}, ValueError, "executions"),
    ("explore", {"strategy": "bogus"}, ValueError, "strategy"),
    ("explore", {"seed": -5}, ValueError, "seed"),
    ("explore", {"minimize": "yes"}, TypeError, "minimize"),
    ("explore", {"ignore": ["no_such_violation"]}, ValueError, "ignore"),
    ("explore", {"ignore": "add_present"}, TypeError, "ignore"),
]


@pytest.mark.parametrize(
    ("fn", "kwargs", "exc", "word"),
    API_BAD,
    ids=[f"{f}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for f, kw, _, _ in API_BAD],
)
def test_library_refuses_bad_arguments_with_one_line(
    tripwire: list[object], fn: str, kwargs: dict[str, object], exc: type[Exception], word: str
) -> None:
    with pytest.raises(exc) as info:
        getattr(api, fn)("locked", **kwargs)
    msg = str(info.value)
    assert word in msg and "\n" not in msg, msg
    assert tripwire == []


@pytest.mark.parametrize(
    "spec", ["{raises}", "{syntax}", "{missing}", "{noclass}", "{notvariant}", "nosuch", ""]
)
@pytest.mark.parametrize("fn", ["stress", "explore"])
def test_library_refuses_a_variant_that_does_not_load(
    tripwire: list[object], variant_files: dict[str, str], fn: str, spec: str
) -> None:
    with pytest.raises(ValueError) as info:
        getattr(api, fn)(_fill([spec], variant_files)[0])
    assert "\n" not in str(info.value) and str(info.value)
    assert tripwire == []


def test_library_refuses_what_is_not_a_variant(tripwire: list[object]) -> None:
    with pytest.raises(TypeError, match="PamtVariant"):
        api.stress(42)  # type: ignore[arg-type]
    assert tripwire == []


@pytest.mark.parametrize(
    ("schedule", "exc", "word"),
    [
        ("", ScheduleError, "fields"),
        ("garbage", ScheduleError, "fields"),
        ("s9:rfc:c2.r2.g1.p2.w1:0x3", ScheduleError, "format"),
        ("s1:nosuch:c2.r2.g1.p2.w1:0x3", ValueError, "unknown variant"),
        ("s1:rfc:c2.r2.g1.p1.w1:0x3", ValueError, "pages_per_range"),
        ("s1:locked:c9.r2.g1.p9.w1:0x3", ValueError, "cpus"),
        (b"s1:rfc:c2.r2.g1.p2.w1:0x3", TypeError, "string"),
    ],
)
def test_library_replay_refuses_bad_schedules(
    tripwire: list[object], schedule: object, exc: type[Exception], word: str
) -> None:
    with pytest.raises(exc) as info:
        api.replay(schedule)  # type: ignore[arg-type]
    assert word in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert tripwire == []


def test_library_replay_refuses_bad_times(tripwire: list[object]) -> None:
    for times, exc in ((0, ValueError), (-1, ValueError), (1.5, TypeError)):
        with pytest.raises(exc, match="times"):
            api.replay(GOOD, times=times)  # type: ignore[arg-type]
    assert tripwire == []


# --- property tests: junk in, only the documented errors out ----------------------------

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz.=:,0123456789-_ eE+", max_size=12)


@_SETTINGS
@given(st.one_of(st.text(max_size=60), st.lists(_token, max_size=5).map(",".join)))
def test_fault_specs_parse_or_raise_value_error(spec: str) -> None:
    try:
        plan = FaultPlan.parse(spec, 1)
    except ValueError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(plan, FaultPlan)


@_SETTINGS
@given(
    st.one_of(
        st.text(max_size=40).filter(lambda s: ":" not in s),
        st.builds(lambda a, b: f"/nonexistent/{a}.py:{b}", _token, _token),
        st.builds(
            lambda a, b: f"shmpamt.variants.{a}:{b}",
            st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
            _token,
        ),
        st.builds(lambda a: f"shmpamt.variants.locked:{a}", st.text(max_size=12)),
    )
)
def test_variant_specs_load_or_raise_variant_load_error(spec: str) -> None:
    try:
        cls = load_variant(spec)
    except VariantLoadError as e:
        assert str(e)
    else:
        assert issubclass(cls, PamtVariant)


@_SETTINGS
@given(st.text(alphabet="s0123456789:abcdefrlkop.-xw_%", max_size=50))
def test_schedule_like_text_parses_or_raises_schedule_error(text: str) -> None:
    try:
        s = Schedule.parse(text)
    except ScheduleError as e:
        assert str(e)
    else:
        assert Schedule.parse(s.encode()) == s


_VALUES = st.sampled_from(
    ["0", "1", "-1", "2", "8", "65", "513", "0.5", "1.5", "-0.1", "1e9", "abc", "", "inf", "3"]
)
_STRESS_OPTS = [
    "--cpus", "--ranges", "--pages-per-range", "--hot", "--hold-us", "--duration",
    "--iterations", "--seed", "--chaos", "--faults",
]  # fmt: skip
_EXPLORE_OPTS = [
    "--cpus", "--rounds", "--ranges", "--depth", "--preemptions", "--budget", "--executions",
    "--seed", "--strategy",
]  # fmt: skip


@st.composite
def _command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["stress", "explore", "replay"]))
    if command == "replay":
        schedule = draw(st.one_of(st.just(GOOD), st.text(max_size=30)))
        extra = draw(st.lists(st.sampled_from(["--times", "--minimize", "--bogus"]), max_size=2))
        args = ["replay", schedule]
        for opt in extra:
            args += [opt] if opt == "--minimize" else [opt, draw(_VALUES)]
        return args
    opts = _STRESS_OPTS if command == "stress" else _EXPLORE_OPTS
    args = [command, "--variant", draw(st.sampled_from(["locked", "nosuch", ""]))]
    for opt in draw(st.lists(st.sampled_from(opts), max_size=4)):
        args += [opt, draw(_VALUES)]
    return args


@_SETTINGS
@given(_command_lines())
def test_any_command_line_is_refused_with_exit_2_or_accepted(
    tripwire: list[object], args: list[str]
) -> None:
    """NaN is left out here: it has tests of its own above."""
    runner = CliRunner(env={"COLUMNS": "1000"})
    try:
        r = runner.invoke(main, args, catch_exceptions=False)
    except WouldSpawn:
        return  # valid arguments: the command got as far as starting a system
    if args[0] == "replay" and r.exit_code in (0, 1):
        pytest.fail(f"{args}: replay finished without starting a system")
    assert r.exit_code == 2, (args, r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert len(_clear_lines(r.stderr)) == 1, (args, r.stderr)
