"""The pytest plugin from the outside: a user's test file run by pytest in a subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shmpamt.machine.ipc import parse_name, pid_alive

pytest_plugins = ["pytester"]

# Keep identical to the example in docs/library.md (test_docs_show_this_example checks).
USER_TEST = '''\
"""My get/put helpers under PCT exploration: run with pytest -n auto."""

from shmpamt.variants.locked import Locked
from shmpamt.variants.mutants import RfcEarlyPublish


class MyRacy(RfcEarlyPublish):  # my copy of the rfc helpers, with a slip
    name = "my-racy"


class MyLocked(Locked):  # every get/put under pamt_lock
    name = "my-locked"


def test_racy(shmpamt):
    shmpamt.check(MyRacy)


def test_locked(shmpamt):
    shmpamt.check(MyLocked)
'''

DOCS = Path(__file__).resolve().parents[1] / "docs" / "library.md"


# Records the pid of the inner pytest and of each of its xdist workers: every shmpamt
# IPC object is created by the test process itself and named after its pid.
RECORD_PIDS = """
import os

def pytest_sessionstart(session):
    with open(os.path.join(str(session.config.rootpath), "pids.txt"), "a") as f:
        f.write(f"{os.getpid()}\\n")
"""


def _objects_of(pids: set[int]) -> set[str]:
    out = set()
    for n in os.listdir("/dev/shm"):
        p = parse_name(n)
        if p is not None and p.pid in pids:
            out.add(n)
    return out


@pytest.fixture
def user_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The inner run is a user's fresh run, not one more worker of ours.
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(test_user=USER_TEST)
    pytester.makeconftest(RECORD_PIDS)
    return pytester


# executions 300 / seed 0: PCT finds MyRacy's slip within 15 executions (deterministic),
# and MyLocked's 300 executions take about a second.
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist2"])
def test_user_file_fails_racy_passes_locked_leaves_shm_clean(
    user_run: pytest.Pytester, xdist: list[str]
) -> None:
    res = user_run.runpytest_subprocess(
        *xdist, "-p", "no:cacheprovider", "--shmpamt-seed=0", "--shmpamt-executions=300"
    )
    res.assert_outcomes(passed=1, failed=1)
    out = res.stdout.str()
    assert "FAILED test_user.py::test_racy" in out
    assert "shmpamt replay s1:" in out
    assert "shmpamt: seed=0 strategy=portfolio executions=300" in out
    pids = {int(p) for p in (user_run.path / "pids.txt").read_text().split()}
    assert len(pids) == (3 if xdist else 1)  # controller + 2 workers, or one process
    # Every process of the inner run has exited: whatever of theirs is left is leaked.
    assert _objects_of(pids) == set()
    assert not any(pid_alive(p) for p in pids)


def test_plugin_options_reach_the_fixtures(user_run: pytest.Pytester) -> None:
    user_run.makepyfile(
        test_opts="""
        def test_settings(shmpamt_settings, shmpamt):
            s = shmpamt_settings
            assert (s.seed, s.executions, s.iterations, s.strategy, s.worker_id) == (
                7, 5, 9, "random", "master"
            )
            assert s.testrun_uid and shmpamt.settings is s
        """
    )
    res = user_run.runpytest_subprocess(
        "test_opts.py",
        "--shmpamt-seed=7",
        "--shmpamt-executions=5",
        "--shmpamt-iterations=9",
        "--shmpamt-strategy=random",
    )
    res.assert_outcomes(passed=1)


def test_bad_option_values_are_refused(user_run: pytest.Pytester) -> None:
    res = user_run.runpytest_subprocess("--shmpamt-strategy=bogus")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res = user_run.runpytest_subprocess("--shmpamt-executions=0")
    assert res.ret == pytest.ExitCode.USAGE_ERROR


def test_plugin_cli_and_library_agree_on_names_and_defaults() -> None:
    """One meaning per option name: the plugin, the CLI and the configs share them."""
    from dataclasses import fields

    import click

    from shmpamt import pytest_plugin
    from shmpamt.cli.app import main
    from shmpamt.config import ExploreConfig, StressConfig
    from shmpamt.schedulers.registry import DEFAULT_STRATEGY, STRATEGIES

    for command, config in ((main.commands["stress"], StressConfig),
                            (main.commands["explore"], ExploreConfig)):  # fmt: skip
        defaults = {
            f.name: f.default_factory() if callable(f.default_factory) else f.default
            for f in fields(config)
        }
        for p in command.params:
            if not isinstance(p, click.Option) or p.name not in defaults:
                continue
            want, got = defaults[p.name], p.default
            empty = got is None or got == () or not isinstance(got, int | float | str | bool)
            # Invariant: a CLI option with a config field's name has that field's default
            # (or none, and the config supplies it).
            assert got == want or (empty and not want) or got is None, (p.name, got, want)
    assert ExploreConfig("rfc").strategy == DEFAULT_STRATEGY == pytest_plugin.DEFAULT_STRATEGY
    assert main.commands["explore"].params  # strategy choices come from the registry
    strategy = next(p for p in main.commands["explore"].params if p.name == "strategy")
    assert isinstance(strategy.type, click.Choice) and tuple(strategy.type.choices) == STRATEGIES
    # the plugin's options name what they count: executions (explore), iterations (stress)
    assert pytest_plugin.OPT_EXECUTIONS == "--shmpamt-executions"
    assert pytest_plugin.OPT_ITERATIONS == "--shmpamt-iterations"


def test_loading_the_plugin_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_light="""
        import sys

        def test_light():
            heavy = {"posix_ipc", "cffi", "atomics", "shmpamt.api", "shmpamt.machine.ipc"}
            assert "shmpamt.pytest_plugin" in sys.modules
            assert heavy.isdisjoint(sys.modules), heavy & set(sys.modules)
        """
    )
    pytester.runpytest_subprocess("-p", "no:xdist").assert_outcomes(passed=1)


def test_docs_show_this_example() -> None:
    assert USER_TEST in DOCS.read_text()
