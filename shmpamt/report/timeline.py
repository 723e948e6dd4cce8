"""Swim-lane timeline of one execution: who did what to which refcount, step by step.

A failing schedule is only useful once a human sees the interleaving it
forces. One column per CPU, one row per scheduling step, each cell written the
way the kernel code reads (``atomic_dec_and_test(refcount[0]) 1→0 = true``,
``TDH.PHYMEM.PAMT.REMOVE range 0 → TDX_SUCCESS``), and the step where a
violation was detected highlighted with what went wrong. The same rows render
to the terminal (rich) and to a self-contained HTML file.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shmpamt import tdx
from shmpamt.machine.kernel import END_SUFFIX
from shmpamt.records.execution import TraceEvent
from shmpamt.records.publish import write_file
from shmpamt.records.violations import Violation, describe

# Ops that return a truth value / a number, as the kernel's atomic_t API does (the
# race report prints them the same way).
BOOL_OPS: Final = frozenset(
    {
        "atomic_dec_and_test",
        "atomic_inc_not_zero",
        "atomic_add_unless",
        "atomic_inc_unless_negative",
        "atomic_dec_unless_positive",
    }
)
VALUE_OPS: Final = frozenset(
    {"atomic_inc_return", "atomic_dec_return", "atomic_dec_if_positive", "atomic_cmpxchg"}
)
SEAMCALLS: Final = frozenset(tdx.LEAF_NAMES.values())
_END: Final = END_SUFFIX  # a two-step SEAMCALL's second point

# Cell kinds, shared by the terminal styles and the HTML classes.
ATOMIC: Final = "atomic"
LOCK: Final = "lock"
SEAMCALL_OK: Final = "seam-ok"
SEAMCALL_ERR: Final = "seam-err"
OTHER: Final = "other"
VIOLATION: Final = "violation"

_RICH_STYLE: Final = {
    ATOMIC: "cyan",
    LOCK: "magenta",
    SEAMCALL_OK: "green",
    SEAMCALL_ERR: "bold red",
    OTHER: "",
    VIOLATION: "bold white on red",
}
LEGEND: Final = (
    "refcount[r] is the PAMT refcount of 2 MiB range r; a→b its value before→after the step; "
    "= the value the primitive returned; → the SEAMCALL status"
)


@dataclass(frozen=True)
class Cell:
    text: str
    kind: str
    note: str = ""


@dataclass(frozen=True)
class Row:
    """One line of the timeline: an event row, or the violation detected at that step."""

    step: int
    cpu: int
    cell: Cell
    violation: bool = False
    #: an event row at whose step a violation was detected
    marked: bool = False


def describe_event(e: TraceEvent) -> Cell:
    """The cell text for one step, in the kernel's vocabulary."""
    op = e.op
    if op.startswith("atomic"):
        ref = f"refcount[{e.target}]"
        if op == "atomic_read":
            shown = e.result if e.after is None else e.after
            return Cell(f"atomic_read({ref}) = {shown}", ATOMIC, e.note)
        text = f"{op}({ref})"
        if e.before is not None and e.after is not None:
            text += f" {e.before}→{e.after}"
        elif e.after is not None:
            text += f" →{e.after}"
        if op in BOOL_OPS:
            text += f" = {'true' if e.result else 'false'}"
        elif op in VALUE_OPS:
            text += f" = {e.result}"
        return Cell(text, ATOMIC, e.note)
    if op in ("spin_lock", "spin_unlock"):
        return Cell(f"{op}(&pamt_lock)", LOCK, e.note)
    if op in SEAMCALLS or (op.endswith(_END) and op[: -len(_END)] in SEAMCALLS):
        # a two-step call: the begin says "locks held", the end its status; a BUSY
        # says whether another CPU's call held the entry or a fault was injected
        where = f" range {e.target}" if e.target >= 0 else ""
        kind = SEAMCALL_ERR if tdx.is_error(e.result) else SEAMCALL_OK
        return Cell(f"{op}{where} → {tdx.describe_status(e.result)}", kind, e.note)
    if op == "alloc_page":
        got = f"{e.result:#x}" if e.result else "NULL"
        return Cell(f"alloc_page() = {got}", OTHER, e.note)
    if op == "free_page":
        return Cell(f"__free_page({e.result:#x})", OTHER, e.note)
    return Cell(f"{op}({e.target}) = {e.result}", OTHER, e.note)


def rows(
    events: Sequence[TraceEvent], violations: Sequence[tuple[int, Violation]] = ()
) -> list[Row]:
    """Events in step order, each violation right after the step it was detected at."""
    bad_steps = {s for s, _ in violations}
    out: list[tuple[tuple[int, int, int], Row]] = []
    for i, e in enumerate(events):
        out.append(
            ((e.step, 0, i), Row(e.step, e.cpu, describe_event(e), marked=e.step in bad_steps))
        )
    by_step = {e.step: e.cpu for e in events}
    for i, (step, v) in enumerate(violations):
        cpu = v.cpu if v.cpu >= 0 else by_step.get(step, -1)
        text = f"VIOLATION {v.name}: {describe(v)}"
        out.append(((step, 1, i), Row(step, cpu, Cell(text, VIOLATION), violation=True)))
    out.sort(key=lambda kr: kr[0])
    return [r for _, r in out]


def _cpu_count(rs: Sequence[Row], cpus: int | None) -> int:
    seen = max((r.cpu for r in rs), default=-1) + 1
    return max(cpus or 0, seen, 1)


def _title(title: str, violations: Sequence[tuple[int, Violation]]) -> str:
    if title:
        return title
    if violations:
        step, first = min(violations, key=lambda sv: sv[0])
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        return f"timeline: {first.name} at step {step}{more}"
    return "timeline"


def render(
    events: Sequence[TraceEvent],
    violations: Sequence[tuple[int, Violation]] = (),
    *,
    cpus: int | None = None,
    title: str = "",
) -> Table:
    """The swim lanes as a rich Table (print it with a rich Console)."""
    rs = rows(events, violations)
    n = _cpu_count(rs, cpus)
    # Text, not str: rich would read "[r]" or a user's title as markup.
    table = Table(title=Text(_title(title, violations)), caption=Text(LEGEND), expand=False)
    table.add_column("step", justify="right", style="dim", no_wrap=True)
    for c in range(n):
        table.add_column(f"cpu {c}", overflow="fold")
    for r in rs:
        cells: list[Text | str] = [""] * n
        body = Text(r.cell.text, style=_RICH_STYLE[r.cell.kind])
        if r.cell.note:
            body.append(f"  ({r.cell.note})", style="dim")
        # A violation without a CPU (e.g. at quiescence) spans the first lane.
        cells[r.cpu if 0 <= r.cpu < n else 0] = body
        label = "!!" if r.violation else str(r.step)
        style = "bold white on red" if r.violation else ("bold" if r.marked else None)
        table.add_row(label, *cells, style=style)
    return table


def render_text(
    events: Sequence[TraceEvent],
    violations: Sequence[tuple[int, Violation]] = (),
    *,
    cpus: int | None = None,
    title: str = "",
    width: int | None = None,
) -> str:
    """The timeline as plain text (no colour), for logs, reports and tests."""
    table = render(events, violations, cpus=cpus, title=title)
    n = len(table.columns) - 1
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width or 8 + 46 * n,
        color_system=None,
        force_terminal=False,
        no_color=True,
        highlight=False,
    )
    console.print(table)
    return buf.getvalue()


_CSS: Final = """
body { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; margin: 1.5em;
       color: #1b1b1b; background: #fff; }
h1 { font-size: 1.15em; }
p.legend { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; vertical-align: top; white-space: pre; }
th { background: #eee; position: sticky; top: 0; }
td.step { color: #777; text-align: right; }
td.atomic { color: #005f87; }
td.lock { color: #87008f; }
td.seam-ok { color: #1d6b1d; }
td.seam-err { color: #b00000; font-weight: bold; }
td.other { color: #333; }
span.note { color: #888; }
tr.marked td { background: #ffe9e9; }
tr.violation td { background: #c00000; color: #fff; font-weight: bold; white-space: normal; }
"""


def to_html(
    events: Sequence[TraceEvent],
    violations: Sequence[tuple[int, Violation]] = (),
    *,
    cpus: int | None = None,
    title: str = "",
    replay: str = "",
    shown: str = "",
) -> str:
    """A complete, self-contained HTML (also well-formed XML) document: inline CSS only.

    It opens with what a reader came for (the violations, each linked to its
    row, and the replay command) before the long table.
    """
    rs = rows(events, violations)
    n = _cpu_count(rs, cpus)
    esc = html.escape
    head = "".join(f"<th>cpu {c}</th>" for c in range(n))
    lines = []
    seen_violations = 0
    for r in rs:
        lane = r.cpu if 0 <= r.cpu < n else 0
        tds = []
        for c in range(n):
            if c != lane:
                tds.append("<td></td>")
                continue
            note = f' <span class="note">({esc(r.cell.note)})</span>' if r.cell.note else ""
            tds.append(f'<td class="{r.cell.kind}">{esc(r.cell.text)}{note}</td>')
        cls = "violation" if r.violation else ("marked" if r.marked else "event")
        label = "!!" if r.violation else str(r.step)
        anchor = ""
        if r.violation:
            anchor = f' id="violation-{seen_violations}"'
            seen_violations += 1
        lines.append(f'<tr class="{cls}"{anchor}><td class="step">{label}</td>{"".join(tds)}</tr>')
    t = esc(_title(title, violations))
    order = sorted(range(len(violations)), key=lambda i: (violations[i][0], i))
    items = "".join(
        f'<li><a href="#violation-{k}">{esc(violations[i][1].name)} at step '
        f"{violations[i][0]}</a>: {esc(describe(violations[i][1]))}</li>"
        for k, i in enumerate(order)
    )
    summary = f'<ul class="summary">{items}</ul>\n' if items else "<p>no violation</p>\n"
    if replay:
        summary += f'<p class="replay">replay: <code>{esc(replay)}</code></p>\n'
    summary += f"<p>{len(events)} steps, {n} CPUs</p>\n"
    if shown:
        summary += f'<p class="shown">what the search showed: {esc(shown)}</p>\n'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8"/>'
        f"<title>{t}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{t}</h1>\n{summary}"
        f'<p class="legend">{esc(LEGEND)}</p>\n'
        f"<table>\n<thead><tr><th>step</th>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(lines)
        + "\n</tbody>\n</table>\n</body></html>\n"
    )


def write_html(
    path: str | Path,
    events: Sequence[TraceEvent],
    violations: Sequence[tuple[int, Violation]] = (),
    *,
    cpus: int | None = None,
    title: str = "",
    replay: str = "",
    shown: str = "",
) -> None:
    """Write :func:`to_html` to ``path`` (UTF-8), whole or not at all (see
    records/publish.py): raises OSError; no temp file survives it."""
    text = to_html(events, violations, cpus=cpus, title=title, replay=replay, shown=shown)
    write_file(path, text.encode("utf-8"))
