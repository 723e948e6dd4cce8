"""Running ``python -m shmpamt`` as a user's shell does, for the tests that judge its output.

One place for the environment every such test wants: no inherited terminal size (the
report's width is the test's choice), and an optional cache directory of its own so that
built C variants and the failure database do not leak between tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def cli_env(cache: Path | None = None, columns: int | None = None) -> dict[str, str]:
    """This process's environment without its terminal size, with these instead."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if cache is not None:
        env["SHMPAMT_CACHE_DIR"] = str(cache)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return env


def shmpamt_cli(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """The finished command, its output captured as text (``env`` None: :func:`cli_env`)."""
    return subprocess.run(
        [sys.executable, "-m", "shmpamt", *args],
        cwd=cwd,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
