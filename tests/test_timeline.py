"""Timelines: a lane per CPU, steps read like the kernel code, the violation stands out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from shmpamt import tdx
from shmpamt.records.violations import QUIESCENT_MISMATCH, REMOVE_WHILE_IN_USE, Violation, describe
from shmpamt.report.timeline import (
    TraceEvent,
    describe_event,
    render_text,
    rows,
    to_html,
    write_html,
)

PAGE = 0x3000


def ev(
    step: int,
    cpu: int,
    op: str,
    target: int = 0,
    before: int | None = None,
    after: int | None = None,
    result: int = 0,
    note: str = "",
) -> TraceEvent:
    return TraceEvent(step, cpu, op, target, before, after, result, note)


# A put on cpu 1 drops the last reference while cpu 0's get has already
# bumped it back from zero: cpu 1 removes a PAMT cpu 0 is about to use.
EVENTS = [
    ev(0, 0, "atomic_inc_not_zero", before=1, after=2, result=1, note="tdx_pamt_get"),
    ev(1, 1, "atomic_dec_and_test", before=2, after=1, result=0, note="tdx_pamt_put"),
    ev(2, 0, "TDH.MEM.PAGE.AUG", result=tdx.TDX_SUCCESS),
    ev(3, 2, "spin_lock", target=-1),
    ev(4, 2, "atomic_read", before=1, after=1, result=1),
    ev(5, 2, "atomic_dec_and_test", before=1, after=0, result=1),
    ev(6, 2, "TDH.PHYMEM.PAMT.REMOVE", result=tdx.TDX_PAMT_PAGE_NOT_EMPTY),
    ev(7, 2, "spin_unlock", target=-1),
    ev(8, 1, "alloc_page", target=-1, result=0),
    ev(9, 1, "free_page", target=-1, result=0x10000002000),
]
BAD = Violation(
    REMOVE_WHILE_IN_USE, cpu=2, range=0, leaf=tdx.TDH_PHYMEM_PAMT_REMOVE, ts_ns=1, a=1, b=0
)
LATE = Violation(QUIESCENT_MISMATCH, cpu=-1, range=0, leaf=-1, ts_ns=2, a=1, b=0, c=1)


def test_cells_read_like_the_kernel_code() -> None:
    texts = [describe_event(e).text for e in EVENTS]
    assert texts[0] == "atomic_inc_not_zero(refcount[0]) 1→2 = true"
    assert texts[1] == "atomic_dec_and_test(refcount[0]) 2→1 = false"
    assert texts[2] == "TDH.MEM.PAGE.AUG range 0 → TDX_SUCCESS"
    assert texts[3] == "spin_lock(&pamt_lock)"
    assert texts[4] == "atomic_read(refcount[0]) = 1"
    assert texts[6] == "TDH.PHYMEM.PAMT.REMOVE range 0 → TDX_PAMT_PAGE_NOT_EMPTY"
    assert texts[8] == "alloc_page() = NULL"
    assert texts[9] == "__free_page(0x10000002000)"
    assert describe_event(EVENTS[6]).kind == "seam-err"
    assert describe_event(EVENTS[2]).kind == "seam-ok"
    assert describe_event(ev(0, 0, "atomic_inc_return", before=0, after=1, result=1)).text == (
        "atomic_inc_return(refcount[0]) 0→1 = 1"
    )
    assert describe_event(ev(0, 0, "atomic_inc", before=0, after=1)).text == (
        "atomic_inc(refcount[0]) 0→1"
    )


def test_rows_put_violations_after_their_step() -> None:
    rs = rows(EVENTS, [(6, BAD), (10, LATE)])
    assert [r.step for r in rs] == [0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10]
    assert rs[7].violation and rs[7].cpu == 2
    assert rs[6].marked and not rs[5].marked
    assert rs[-1].violation and rs[-1].cpu == -1


def test_terminal_view_shows_every_cpu_and_the_violation() -> None:
    out = render_text(EVENTS, [(6, BAD)], width=400)
    for c in range(3):
        assert f"cpu {c}" in out
    assert "atomic_dec_and_test(refcount[0]) 1→0 = true" in out
    assert "TDX_PAMT_PAGE_NOT_EMPTY" in out
    assert "VIOLATION remove_while_in_use" in out
    assert describe(BAD) in out
    assert "(tdx_pamt_get)" in out
    assert "timeline: remove_while_in_use at step 6" in out  # the default title
    assert "refcount[r] is the PAMT refcount" in out  # legend, not eaten as markup
    # Lanes: cpu 2's operations sit in the third CPU column, right of cpu 0's.
    line = next(ln for ln in out.splitlines() if "spin_lock(&pamt_lock)" in ln)
    first = next(ln for ln in out.splitlines() if "atomic_inc_not_zero" in ln)
    assert line.index("spin_lock") > first.index("atomic_inc_not_zero") + 40


def test_more_lanes_than_cpus_that_ran() -> None:
    out = render_text(EVENTS[:1], cpus=4, width=240)
    assert "cpu 3" in out and "cpu 4" not in out


def test_html_is_self_contained_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "t.html"
    write_html(path, EVENTS, [(6, BAD), (10, LATE)], title="rfc <norecheck> & friends")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    root = ET.fromstring(text)  # raises on anything not well-formed
    assert root.tag == "html"
    # Invariant: nothing is fetched from elsewhere.
    for tag in ("script", "link", "img", "iframe"):
        assert root.find(f".//{tag}") is None
    assert "http" not in text and "url(" not in text and "src=" not in text
    assert root.find("./head/style") is not None
    heads = [th.text for th in root.iter("th")]
    assert heads == ["step", "cpu 0", "cpu 1", "cpu 2"]
    bad = [tr for tr in root.iter("tr") if tr.get("class") == "violation"]
    assert len(bad) == 2
    assert "remove_while_in_use" in "".join(bad[0].itertext())
    # The violation sits in cpu 2's lane (step column + 3 CPU columns).
    cells = bad[0].findall("td")
    assert len(cells) == 4 and "VIOLATION" in (cells[3].text or "")
    assert root.find(".//title").text == "rfc <norecheck> & friends"  # type: ignore[union-attr]
    assert to_html(EVENTS, [(6, BAD)]) == to_html(EVENTS, [(6, BAD)])


def test_default_title_names_the_first_violation() -> None:
    out = render_text(EVENTS, [(10, LATE), (6, BAD)], width=400)
    assert "timeline: remove_while_in_use at step 6 (+1 more)" in out
    assert "[bold]x" in render_text(EVENTS[:1], title="[bold]x", width=200)


def test_html_opens_with_the_violations_linked_to_their_rows_and_the_replay() -> None:
    text = to_html(EVENTS, [(10, LATE), (6, BAD)], replay="shmpamt replay s1:x:c3.r1.g1.p3.w0:0")
    root = ET.fromstring(text)
    body = root.find("./body")
    assert body is not None
    order = [child.tag for child in body]
    # Invariant: what the reader came for sits above the fold, before the table.
    assert order.index("ul") < order.index("table")
    links = [a.get("href") for a in body.iter("a")]
    ids = {tr.get("id") for tr in root.iter("tr") if tr.get("id")}
    assert links == ["#violation-0", "#violation-1"] and {x[1:] for x in links} <= ids
    first = "".join(next(iter(body.iter("li"))).itertext())
    assert first.startswith("remove_while_in_use at step 6")
    assert "shmpamt replay s1:x:" in text.split("<table>")[0]
