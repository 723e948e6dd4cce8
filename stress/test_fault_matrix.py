"""Fault matrix (issue 17, item 6): every fault kind at random moments, 20+ trials each.

Not part of the default run (``testpaths`` is ``tests/``, and this module skips itself)::

    SHMPAMT_FAULT_MATRIX=1 .venv/bin/pytest stress/test_fault_matrix.py -o faulthandler_timeout=0
    SHMPAMT_FAULT_MATRIX=1 SHMPAMT_FAULT_MATRIX_TRIALS=3 pytest stress/test_fault_matrix.py

Run it serially (no ``-n``): the summary is per process, and parallel runs on two
cores turn timing into noise.

Each trial runs the installed CLI (``stress`` or ``explore`` on locked, v6, and the
buggy rfc and kai so detection is seen to survive) and injects one fault: SIGKILL of
a CPU, the daemon or the runner; SIGSTOP of the daemon or a CPU for 4-15 s; SIGINT or
SIGTERM to the runner. Checked: a documented exit status, no hang, nothing left in
/dev/shm, no process left, valid JSON, and never a violation on locked or v6. At the
end a summary table (trials, false alarms, leaks, orphans per kind) is printed, and
written to ``$SHMPAMT_FAULT_MATRIX_SUMMARY`` if set.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
from fault_matrix import KINDS, Outcome, Trial, run_trial, summary, trials

PER_KIND = int(os.environ.get("SHMPAMT_FAULT_MATRIX_TRIALS", "20"))
SEED = int(os.environ.get("SHMPAMT_FAULT_MATRIX_SEED", "17"))
ENABLED = os.environ.get("SHMPAMT_FAULT_MATRIX") == "1"
OUTCOMES: list[Outcome] = []


def _param(t: Trial) -> object:
    return t


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    if not ENABLED:
        pytest.skip("the fault matrix runs only with SHMPAMT_FAULT_MATRIX=1")
    yield
    text = summary(OUTCOMES)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("\n" + text)
    path = os.environ.get("SHMPAMT_FAULT_MATRIX_SUMMARY")
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "trial", [_param(t) for t in trials(KINDS, PER_KIND, SEED, False)], ids=str
)
def test_fault(trial: Trial) -> None:
    o = run_trial(trial)
    OUTCOMES.append(o)
    # Invariant: a correct variant is never reported for a violation, whatever the fault.
    assert not o.false_alarms, f"{trial}: false alarm {o.false_alarms}"
    assert not o.hung and not o.problems, f"{trial}: {o.problems}"
    assert not o.leaked, f"{trial}: left in /dev/shm {o.leaked}"
    assert not o.orphans, f"{trial}: processes left {o.orphans}"
