"""The race report (``--format text``): the interleaving as kernel changelogs draw it."""

from __future__ import annotations

import subprocess

import pytest
from cli_run import cli_env, shmpamt_cli

from shmpamt.records.execution import GET, PUT, TraceEvent, call_id
from shmpamt.records.violations import Violation
from shmpamt.report.race import WIDTH, race_report

# The schedules here were recorded against the one-step module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_step_module")

#: the seed's RFC: two puts each see their own 1 -> 0 and both issue PAMT.REMOVE
RFC = "s1:rfc:c2.r2.g1.p2.w1:0x30.1"
#: Kai's sketch: a get takes a reference between the slow put's REMOVE and its set(-1)
KAI = "s1:kai:c2.r2.g1.p2.w20:1x30.0"


def _shmpamt(*args: str) -> subprocess.CompletedProcess[str]:
    return shmpamt_cli(args, env=cli_env(columns=200), timeout=120)


def _report(out: str, kind: str) -> list[str]:
    """The race report of ``kind`` in a command's output: its header to its replay line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if f": {kind} (" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("Replay: "))
    return lines[start : end + 1]


def _cells(report: list[str]) -> list[tuple[int, int, str]]:
    """(column, indent within it, text) of each line of the drawing, in order."""
    head = next(i for i, line in enumerate(report) if line.startswith("CPU 0"))
    second = report[head].index("CPU 1")
    out = []
    for line in report[head + 2 :]:
        if not line.strip():
            break
        col = 0 if len(line) - len(line.lstrip()) < second else 1
        body = line[second:] if col else line
        out.append((col, len(body) - len(body.lstrip()), body.strip()))
    return out


def _fits(report: list[str]) -> None:
    for line in report:
        # Invariant: plain ASCII within 72 columns, ready to paste into a review mail.
        assert line.isascii(), line
        assert len(line) <= WIDTH or line.startswith("Replay: shmpamt replay "), line


def _where(cells: list[tuple[int, int, str]], col: int, text: str, after: int = -1) -> int:
    return next(i for i, (c, _, t) in enumerate(cells) if i > after and c == col and t == text)


def test_rfc_two_puts_both_remove() -> None:
    p = _shmpamt("replay", RFC, "--format", "text")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "┏" not in p.stdout.split("replayed 1x")[0]  # text instead of the timeline table
    report = _report(p.stdout, "remove_absent")
    _fits(report)
    assert report[0] == "rfc: remove_absent (2 CPUs x 2 rounds, 1 range)"
    assert report[-1] == f"Replay: shmpamt replay {RFC}"
    cells = _cells(report)
    # CPU 0's put drops 1 -> 0 under the helper, outside the lock...
    put0 = _where(cells, 0, "tdx_pamt_put()")
    dec = _where(cells, 0, "atomic_dec_and_test() == true", put0)
    assert cells[dec][1] == cells[put0][1] + 2  # nested under tdx_pamt_put()
    # ...CPU 1 takes the range, puts it and issues REMOVE itself...
    put1 = next(
        i
        for i, (c, _, t) in enumerate(cells)
        if i > dec and c == 1 and t.startswith("tdx_pamt_put()") and "REMOVE" in t
    )
    # ...then CPU 0 goes on with its own REMOVE, which finds the PAMT gone.
    remove = _where(cells, 0, "tdh_phymem_pamt_remove()", put1)
    assert cells[remove + 1][2] == "== TDX_NO_PAMT_PAGE_PAIR"
    assert cells[remove + 2][2] == "^^^ remove_absent"
    assert "remove_absent (step 70): cpu 0 issued TDH.PHYMEM.PAMT.REMOVE" in " ".join(report)


def test_kai_lost_reference() -> None:
    p = _shmpamt("replay", KAI, "--format", "text")
    assert p.returncode == 1, p.stdout + p.stderr
    report = _report(p.stdout, "use_without_pamt")
    _fits(report)
    assert report[0] == "kai: use_without_pamt (2 CPUs x 2 rounds, 1 range)"
    cells = _cells(report)
    # CPU 1's slow put removes the PAMT (its set(-1) still to come)...
    put = _where(cells, 1, "tdx_pamt_put()")
    remove = _where(cells, 1, "tdh_phymem_pamt_remove()", put)
    assert cells[remove][1] == cells[put][1] + 2 and cells[remove + 1][2] == "== TDX_SUCCESS"
    # ...when CPU 0's fast path takes a reference on the refcount it left at 0...
    get = _where(cells, 0, "tdx_pamt_get()", remove)
    assert cells[get + 1][2] == "atomic_inc_unless_negative()"
    assert cells[get + 2][2] == "== true"
    # ...and uses a page of the range whose PAMT is gone.
    aug = _where(cells, 0, "tdh_mem_page_aug()", get)
    assert cells[aug][1] == 0 and cells[aug + 1][2] == "== TDX_MISSING_PAMT_PAGE_PAIR"
    assert cells[aug + 2][2] == "^^^ use_without_pamt"
    assert "atomic_set(-1)" not in "\n".join(report)  # the drawing ends at the violation


def test_explore_format_text_draws_each_finding() -> None:
    p = _shmpamt(
        "explore", "--variant", "rfc", "--executions", "60", "--seed", "1", "--jobs", "1",
        "--db", "off", "--format", "text",
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    for kind in ("remove_absent", "add_present"):
        report = _report(p.stdout, kind)
        _fits(report)
        assert any(line.startswith("CPU 0") and "CPU 1" in line for line in report)
    assert "┃ step ┃" not in p.stdout  # no timeline table


def _ev(step: int, cpu: int, op: str, call: int = 0, before: int = 0, after: int = 0) -> TraceEvent:
    atomic = op.startswith("atomic")
    return TraceEvent(
        step, cpu, op, 0, before if atomic else None, after if atomic else None, 0, "", call
    )


def test_four_cpus_and_long_names_stay_within_72_columns() -> None:
    ops = ["atomic_inc_unless_negative", "TDH.PHYMEM.PAMT.REMOVE", "spin_lock"]
    events = [
        _ev(i, i % 4, ops[i % 3], call_id(1 + i // 4, GET if i % 2 else PUT), i, i + 1)
        for i in range(24)
    ]
    v = Violation("remove_absent", cpu=3, range=0, leaf=59, ts_ns=0, a=0, b=0)
    text = race_report(events, [(23, v)], variant="x" * 100, kind="remove_absent")
    lines = text.splitlines()
    assert all(len(line) <= WIDTH and line.isascii() for line in lines), text
    assert all(f"CPU {c}" in next(ln for ln in lines if ln.startswith("CPU 0")) for c in range(4))


def test_uninterrupted_calls_are_one_line_and_earlier_ones_are_counted() -> None:
    get, put = call_id(1, GET), call_id(2, PUT)
    events = [
        _ev(0, 0, "atomic_inc_not_zero", get, 0, 0),
        _ev(1, 0, "atomic_set", get, 0, 1),
        _ev(2, 0, "atomic_dec_and_test", put, 1, 0),
        _ev(3, 1, "atomic_inc_not_zero", call_id(1, GET), 0, 0),
        _ev(4, 0, "TDH.PHYMEM.PAMT.REMOVE", put),
    ]
    text = race_report(events, [], variant="v")
    assert "[earlier: get]" in text  # CPU 0's first get ended before the race began
    assert "At step 2: refcount == 1, PAMT absent" in text
    # CPU 1's get ran inside CPU 0's put: drawn in full, being short (a fast path).
    drawn = [line for line in text.splitlines() if "atomic_inc_not_zero()" in line]
    assert len(drawn) == 1 and drawn[0].startswith(" " * 37 + "  atomic_inc"), text
    longer = [*events[:3], *(_ev(3 + i, 1, "atomic_read", call_id(1, GET)) for i in range(5))]
    longer.append(_ev(8, 0, "TDH.PHYMEM.PAMT.REMOVE", put))
    # A longer call that ran inside another CPU's is one line.
    assert "atomic_read" not in race_report(longer, [], variant="v")


def test_the_library_draws_a_replay_and_says_nothing_for_an_absent_kind() -> None:
    from shmpamt import api

    res = api.replay(KAI)
    text = res.race_report("use_without_pamt")
    assert text.startswith("kai: use_without_pamt (2 CPUs x 2 rounds, 1 range)\n"), text
    assert "  atomic_inc_unless_negative()" in text
    assert res.race_report() == text  # the first finding's, by default
    assert res.race_report("remove_absent") == ""  # not shown by this execution
