"""pytest plugin (registered as a ``pytest11`` entry point); imports nothing heavy at load time.

pytest loads every installed plugin in every test run, including runs that
never touch shmpamt, so this module imports only pytest and the standard
library; ``shmpamt.api`` (cffi, posix_ipc, the atomics binding) is imported
inside the fixtures that need it.

Fixtures:

- ``shmpamt_settings``: the run's seed, executions, iterations and strategy (command-line
  options below) plus the xdist ``worker_id``/``testrun_uid`` ("master" and a
  fresh uid without xdist);
- ``shmpamt``: a :class:`ShmpamtRig` bound to those settings, whose
  ``explore``/``stress``/``replay``/``check`` return ``shmpamt.api.Result``;
  after the test it asserts that no IPC object created by this process is left
  in /dev/shm.

IPC names are ``/shmpamt.<pid>.<token>.<role>[.<xdist worker>]`` (see
``shmpamt.machine.ipc``): the creator's pid and a random token make every run's names
unique, and the worker suffix (from ``PYTEST_XDIST_WORKER``) keeps workers apart
even if a pid is reused, so tests on different workers never share an object.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pytest

from shmpamt.records.faildb import DB_ENV, DEFAULT_DB, OFF, resolve_db
from shmpamt.schedulers.registry import DEFAULT_STRATEGY, STRATEGIES

if TYPE_CHECKING:
    from shmpamt.api import Result, VariantLike

#: command-line options, the only place their spelling lives
OPT_SEED: Final = "--shmpamt-seed"
OPT_EXECUTIONS: Final = "--shmpamt-executions"
OPT_ITERATIONS: Final = "--shmpamt-iterations"
OPT_STRATEGY: Final = "--shmpamt-strategy"
OPT_DB: Final = "--shmpamt-db"
OPT_FAULTS: Final = "--shmpamt-faults"
OPT_MAX_FAULTS: Final = "--shmpamt-max-faults"

#: defaults (no ini keys: a run is described by its command line alone)
DEFAULT_SEED: Final = 0
DEFAULT_EXECUTIONS: Final = 300  # executions per explore
DEFAULT_ITERATIONS: Final = 300  # get/put rounds per CPU per stress

_DEST_SEED: Final = "shmpamt_seed"
_DEST_EXECUTIONS: Final = "shmpamt_executions"
_DEST_ITERATIONS: Final = "shmpamt_iterations"
_DEST_STRATEGY: Final = "shmpamt_strategy"
_DEST_DB: Final = "shmpamt_db"
_DEST_FAULTS: Final = "shmpamt_faults"
_DEST_MAX_FAULTS: Final = "shmpamt_max_faults"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, got {value}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shmpamt", "shmpamt: cross-process PAMT refcount tests")
    group.addoption(
        OPT_SEED,
        dest=_DEST_SEED,
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"base seed of every shmpamt run (default {DEFAULT_SEED}); same seed, same schedules",
    )
    group.addoption(
        OPT_EXECUTIONS,
        dest=_DEST_EXECUTIONS,
        type=_positive_int,
        default=DEFAULT_EXECUTIONS,
        metavar="N",
        help=f"executions per explore (default {DEFAULT_EXECUTIONS})",
    )
    group.addoption(
        OPT_ITERATIONS,
        dest=_DEST_ITERATIONS,
        type=_positive_int,
        default=DEFAULT_ITERATIONS,
        metavar="N",
        help=f"get/put rounds per CPU per stress (default {DEFAULT_ITERATIONS})",
    )
    group.addoption(
        OPT_STRATEGY,
        dest=_DEST_STRATEGY,
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help=f"explore strategy (default {DEFAULT_STRATEGY})",
    )
    group.addoption(
        OPT_DB,
        dest=_DEST_DB,
        default=None,
        metavar="PATH",
        help="failure database: stored failures are replayed before each explore and new "
        f"ones stored (default ${DB_ENV}, else {DEFAULT_DB} in the working directory; "
        f"'{OFF}' for none)",
    )
    group.addoption(
        OPT_FAULTS,
        dest=_DEST_FAULTS,
        default="default",
        metavar="SPEC",
        help="faults explore injects as choices, as explore --faults (default: every kind "
        "in the portfolio; 'none' for the happy path only)",
    )
    group.addoption(
        OPT_MAX_FAULTS,
        dest=_DEST_MAX_FAULTS,
        type=int,
        default=1,
        metavar="K",
        help="most injected faults per explore execution (default 1)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"shmpamt: seed={config.getoption(_DEST_SEED)} "
        f"strategy={config.getoption(_DEST_STRATEGY)} "
        f"executions={config.getoption(_DEST_EXECUTIONS)} "
        f"iterations={config.getoption(_DEST_ITERATIONS)} "
        f"(replay any failure with the 'shmpamt replay ...' command it prints)"
    )


@dataclass(frozen=True)
class ShmpamtSettings:
    """What every shmpamt run in this test session starts from."""

    seed: int
    executions: int
    iterations: int
    strategy: str
    #: xdist worker ("gw0", ...) or "master" without xdist
    worker_id: str
    #: one id for the whole test run, shared by all xdist workers
    testrun_uid: str
    #: the failure database directory (None: off); shared by all xdist workers
    db: str | None = None
    #: explore's --faults and --max-faults
    faults: str = "default"
    max_faults: int = 1


@pytest.fixture(scope="session")
def shmpamt_settings(request: pytest.FixtureRequest) -> ShmpamtSettings:
    config = request.config
    worker_id, uid = "master", uuid.uuid4().hex
    if config.pluginmanager.hasplugin("xdist"):
        worker_id = str(request.getfixturevalue("worker_id"))
        uid = str(request.getfixturevalue("testrun_uid"))
    return ShmpamtSettings(
        seed=int(config.getoption(_DEST_SEED)),
        executions=int(config.getoption(_DEST_EXECUTIONS)),
        iterations=int(config.getoption(_DEST_ITERATIONS)),
        strategy=str(config.getoption(_DEST_STRATEGY)),
        worker_id=worker_id,
        testrun_uid=uid,
        db=resolve_db(config.getoption(_DEST_DB)),
        faults=str(config.getoption(_DEST_FAULTS)),
        max_faults=int(config.getoption(_DEST_MAX_FAULTS)),
    )


class ShmpamtRig:
    """The ``shmpamt`` fixture: the library API with this run's settings filled in.

    Keyword overrides go straight to :func:`shmpamt.api.explore` /
    :func:`shmpamt.api.stress`, so a test can pin ``seed=``, ``depth=``,
    ``executions=`` ... and still pick up the rest from the command line.
    """

    def __init__(self, settings: ShmpamtSettings) -> None:
        self.settings = settings

    def explore(self, variant: VariantLike, **overrides: Any) -> Result:
        """Controlled-scheduling search over ``executions`` executions (every kind found)."""
        from shmpamt.api import explore

        kwargs: dict[str, Any] = {
            "strategy": self.settings.strategy,
            "executions": self.settings.executions,
            "seed": self.settings.seed,
            "db": self.settings.db,
            "faults": self.settings.faults,
            "max_faults": self.settings.max_faults,
        }
        kwargs.update(overrides)
        return explore(variant, **kwargs)

    def stress(self, variant: VariantLike, **overrides: Any) -> Result:
        """Free-running stress: ``iterations`` get/put rounds per CPU unless overridden."""
        from shmpamt.api import stress

        kwargs: dict[str, Any] = {
            "iterations": self.settings.iterations,
            "seed": self.settings.seed,
        }
        if "duration" in overrides:
            del kwargs["iterations"]  # a duration replaces the iteration budget
        kwargs.update(overrides)
        return stress(variant, **kwargs)

    def replay(self, schedule: str) -> Result:
        """Replay a schedule string (``s1:...``) once."""
        from shmpamt.api import replay

        return replay(schedule, times=1)

    def check(self, variant: VariantLike, **overrides: Any) -> Result:
        """Explore until the first failure; fail the test with ``ViolationFound`` on a
        violation or an incident (the replay command inside)."""
        overrides.setdefault("first", True)
        result = self.explore(variant, **overrides)
        result.check()
        return result


def _own_ipc_names() -> set[str]:
    """Names in /dev/shm created by this process (pid) under this xdist worker (suffix)."""
    from shmpamt.machine.ipc import parse_name, worker_suffix

    pid, worker = os.getpid(), worker_suffix()
    out = set()
    for n in os.listdir("/dev/shm"):
        p = parse_name(n)
        if p is not None and p.pid == pid and (p.worker or "") == worker:
            out.add(n)
    return out


@pytest.fixture
def shmpamt(shmpamt_settings: ShmpamtSettings) -> Iterator[ShmpamtRig]:
    before = _own_ipc_names()
    yield ShmpamtRig(shmpamt_settings)
    leaked = _own_ipc_names() - before
    if leaked:
        from shmpamt.machine.ipc import unlink_name

        for n in leaked:  # do not let one leak fail every later test too
            unlink_name("/" + n.removeprefix("sem."))
    # Invariant: every segment and semaphore a test's runs create is gone when it ends.
    assert not leaked, f"shmpamt runs leaked IPC objects into /dev/shm: {sorted(leaked)}"
