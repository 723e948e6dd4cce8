"""The library API: variant specs, Result, check(), and explore/replay agreeing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

import shmpamt.api as api
from shmpamt.records.violations import VIOLATIONS
from shmpamt.variants.base import PamtVariant
from shmpamt.variants.locked import Locked
from shmpamt.variants.registry import load_variant

REPO = Path(api.__file__).resolve().parents[1]


class ModuleLevelLocked(Locked):
    name: ClassVar[str] = "module-level-locked"


def test_variant_spec_of_a_name_is_the_name() -> None:
    assert api.variant_spec("rfc") == "rfc"


def test_variant_spec_of_a_module_level_class_is_a_loadable_file_path() -> None:
    spec = api.variant_spec(ModuleLevelLocked)
    path, _, cls = spec.rpartition(":")
    assert cls == "ModuleLevelLocked"
    assert os.path.isabs(path) and os.path.samefile(path, __file__)
    # What the spawned CPU processes do with it:
    assert load_variant(spec).name == "module-level-locked"


def test_variant_spec_of_a_local_class_says_why_it_cannot_be_used() -> None:
    class Local(Locked):
        name: ClassVar[str] = "local"

    with pytest.raises(ValueError, match=r"inside a function.*module level"):
        api.variant_spec(Local)


def test_variant_spec_rejects_what_is_not_a_variant() -> None:
    with pytest.raises(TypeError):
        api.variant_spec(int)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def racy() -> api.Result:
    return api.explore("rfc-early-publish", executions=300, seed=0)


def test_explore_of_locked_is_ok() -> None:
    r = api.explore("locked", executions=100, seed=1)
    assert r.ok and r.verdict == frozenset()
    assert r.schedules == () and r.replay_commands == ()
    assert all(c == 0 for c in r.counts.values()) and not r.examples
    assert r.clean and "nothing seen in 100 executions" in r.summary()
    r.check()  # does not raise


def test_result_of_a_racy_variant(racy: api.Result) -> None:
    assert not racy.ok
    assert racy.verdict and racy.verdict <= set(racy.counts)
    assert set(racy.counts) == set(VIOLATIONS)  # every name, zero or not
    assert {n for n, c in racy.counts.items() if c} == racy.verdict
    assert set(racy.examples) == racy.verdict
    # one replayable schedule per kind found
    assert [f.kind for f in racy.findings] == sorted(racy.verdict)
    # s2: a kind first seen with an injected fault keeps it when the steps need it
    assert all(s[:3] in ("s1:", "s2:") for s in racy.schedules)
    assert all(s.split(":")[1] == "rfc-early-publish" for s in racy.schedules)
    assert racy.replay_commands == tuple(f"shmpamt replay {s}" for s in racy.schedules)
    assert racy.to_dict()["variant"] == "rfc-early-publish"


def test_check_raises_an_assertion_carrying_the_replay_command(racy: api.Result) -> None:
    with pytest.raises(AssertionError) as info:
        racy.check()
    assert isinstance(info.value, api.ViolationFound)
    assert f"shmpamt replay {racy.schedules[0]}" in str(info.value)


def test_each_schedule_replays_to_its_kind(racy: api.Result) -> None:
    for f in racy.findings:
        again = api.replay(f.schedule)
        assert f.kind in again.verdict


def _python(code: str) -> str:
    # PYTHONPATH: test this tree's shmpamt/__init__.py, however the venv installed it.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_import_shmpamt_stays_light() -> None:
    heavy = ("posix_ipc", "cffi", "atomics", "shmpamt.api", "shmpamt.engine", "shmpamt.machine.ipc")
    code = "import sys, shmpamt; print(shmpamt.__version__, *[m for m in H if m in sys.modules])"
    loaded = _python(code.replace("H", repr(heavy)))
    assert loaded == "0.1.0"


def test_a_cpu_process_loads_no_strategy_and_no_config() -> None:
    # Every CPU and the daemon import this much at each start: with 2 jobs at 2 x 2 that
    # is six processes on two cores before the first step.
    heavy = ("shmpamt.config", "shmpamt.schedulers.dpor", "shmpamt.schedulers.registry")
    code = (
        "import sys, shmpamt.explorer.cpu, shmpamt.engine.cpu, shmpamt.module.daemon\n"
        "print('loaded', *[m for m in H if m in sys.modules])\n"
        "from shmpamt.schedulers import DPOR\n"
        "print(DPOR.__module__)"
    )
    first, second = _python(code.replace("H", repr(heavy))).splitlines()
    assert first == "loaded"
    assert second == "shmpamt.schedulers.dpor"  # the package still names every strategy


def test_the_schedulers_package_resolves_every_name_it_exports() -> None:
    import shmpamt.schedulers as pkg

    # Invariant: the lazy table and __all__ name the same things, and each one loads.
    assert sorted(pkg._HOME) == sorted(pkg.__all__)
    assert all(getattr(pkg, n) is not None for n in pkg.__all__)
    with pytest.raises(AttributeError, match="no_such_strategy"):
        pkg.no_such_strategy  # noqa: B018


def test_package_exports_the_public_api_lazily() -> None:
    out = _python(
        "import shmpamt, shmpamt.api as a, shmpamt.explorer.session as s\n"
        "import shmpamt.machine.kernel as k\n"
        "import shmpamt.config as c\n"
        "from shmpamt.variants.base import PamtVariant\n"
        "print(shmpamt.explore is a.explore, shmpamt.stress is a.stress,"
        " shmpamt.replay is a.replay, shmpamt.Result is a.Result,"
        " shmpamt.ViolationFound is a.ViolationFound, shmpamt.Session is s.Session,"
        " shmpamt.Scenario is c.Scenario, shmpamt.Kernel is k.Kernel,"
        " shmpamt.PamtVariant is PamtVariant, set(shmpamt.__all__) <= set(dir(shmpamt)))\n"
        "from shmpamt import tdx, explore\n"
        "print(tdx.__name__, explore is a.explore)\n"
        "try:\n    shmpamt.no_such_name\nexcept AttributeError as e:\n    print('AE', e)\n"
    )
    first, second, third = out.splitlines()
    assert first.split() == ["True"] * 10
    assert second == "shmpamt.tdx True"
    assert third.startswith("AE") and "no_such_name" in third


def test_the_installed_package_is_this_regular_package() -> None:
    import shmpamt

    # A stale editable install (made before shmpamt/__init__.py existed) imports
    # shmpamt as a namespace package, without __version__ or the public API.
    assert shmpamt.__file__ is not None, (
        "shmpamt imports as a namespace package: reinstall it with "
        "`pip install --no-deps --no-build-isolation -e .`"
    )
    assert issubclass(shmpamt.PamtVariant, PamtVariant)
