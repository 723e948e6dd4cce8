"""Fuzz suite setup: one test case per (built-in variant, seed), so xdist splits the seeds.

Run from the repo root as ``pytest -n auto stress/`` (options of the shmpamt
plugin apply: ``--shmpamt-seed``, ``--shmpamt-executions``, ``--shmpamt-strategy``).

Why no seed runs twice and none is skipped: every xdist worker collects the
same list of test ids (the list depends only on the command line, never on the
worker), and xdist's scheduler sends each collected id to exactly one worker.
Case ``k`` of a variant explores seed ``base + k`` with ``base`` the run's
``--shmpamt-seed``, so the seeds ``base .. base + N - 1`` of every variant are
split across the workers with no overlap and no gap; the same command line
gives the same cases, whichever worker runs them.
"""

from __future__ import annotations

from typing import Final

import pytest

OPT_CASES: Final = "--fuzz-cases"
#: seeds per built-in variant: 8 variants x 8 seeds keeps `-n 2` at about a minute
DEFAULT_CASES: Final = 8


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("shmpamt").addoption(
        OPT_CASES,
        dest="fuzz_cases",
        type=int,
        default=DEFAULT_CASES,
        metavar="N",
        help=f"fuzz suite: seeds explored per built-in variant (default {DEFAULT_CASES})",
    )


def fuzz_cases(base_seed: int, cases: int) -> list[tuple[str, int, int]]:
    """(variant, seed, PCT depth) of every case: seed base+k, depth 2 for even k, 3 for odd."""
    from shmpamt.variants.registry import BUILTIN

    return [(v, base_seed + k, 2 + k % 2) for v in BUILTIN for k in range(cases)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fuzz_case" not in metafunc.fixturenames:
        return
    from shmpamt.pytest_plugin import OPT_SEED

    cfg = metafunc.config
    cases = fuzz_cases(int(cfg.getoption(OPT_SEED)), int(cfg.getoption("fuzz_cases")))
    metafunc.parametrize("fuzz_case", cases, ids=[f"{v}-seed{s}-d{d}" for v, s, d in cases])
