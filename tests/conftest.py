"""Suite-wide guards: nothing a test creates may outlive it in /dev/shm."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shmpamt.ipc import parse_name


def _ours() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if parse_name(n) is not None and _mine(n)}


def _mine(n: str) -> bool:
    p = parse_name(n)
    # Only objects created by this worker process or its children (pid in name is
    # the creator; children are spawned from it, so compare the worker suffix).
    return p is not None and (p.worker or "") == os.environ.get("PYTEST_XDIST_WORKER", "")


@pytest.fixture(autouse=True)
def shm_clean() -> Iterator[None]:
    before = _ours()
    yield
    leaked = _ours() - before
    # Invariant: every segment and semaphore a test creates is gone when it ends.
    assert not leaked, f"IPC objects leaked into /dev/shm: {sorted(leaked)}"
