"""Suite-wide guards: nothing a test creates may outlive it in /dev/shm."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shmpamt.machine.ipc import parse_name, pid_alive

# The suite's own runs keep no failure database (results must not depend on what an
# earlier run stored); tests of the database name theirs.
os.environ.setdefault("SHMPAMT_DB", "off")


def _ours() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if _mine(n)}


def _mine(n: str) -> bool:
    """Created by this test process, or by a process it started that is now gone.

    Another pytest run on the machine may use the same xdist worker suffix; its
    objects belong to a live creator other than us, so they are not ours.
    """
    p = parse_name(n)
    if p is None or (p.worker or "") != os.environ.get("PYTEST_XDIST_WORKER", ""):
        return False
    return p.pid == os.getpid() or not pid_alive(p.pid)


@pytest.fixture(autouse=True)
def shm_clean() -> Iterator[None]:
    before = _ours()
    yield
    leaked = _ours() - before
    # Invariant: every segment and semaphore a test creates is gone when it ends.
    assert not leaked, f"IPC objects leaked into /dev/shm: {sorted(leaked)}"


@pytest.fixture(scope="session")
def shared_c_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One compile cache for the session, shared by its xdist workers (flock makes the
    sharing safe), so each C variant compiles once; the user's own cache is untouched."""
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    old = os.environ.get("SHMPAMT_CACHE_DIR")
    os.environ["SHMPAMT_CACHE_DIR"] = str(shared / "shmpamt-cache")
    yield
    if old is None:
        del os.environ["SHMPAMT_CACHE_DIR"]
    else:
        os.environ["SHMPAMT_CACHE_DIR"] = old


@pytest.fixture
def one_step_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module as one step per SEAMCALL (``SHMPAMT_SEAMCALL_STEPS=1``): for tests whose
    replay strings or step counts were recorded against it. A schedule names steps, and a
    two-step SEAMCALL has one more point, so such a string means another execution there.
    Subprocesses inherit the setting."""
    monkeypatch.setenv("SHMPAMT_SEAMCALL_STEPS", "1")
