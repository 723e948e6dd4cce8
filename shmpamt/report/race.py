"""A race as kernel changelogs draw it: one column per CPU, time going down.

::

    CPU 0                               CPU 1
    -----                               -----
    tdx_pamt_put()
      atomic_dec_and_test() == true
                                        tdx_pamt_get()
                                          atomic_inc_not_zero() == false

Plain ASCII within :data:`WIDTH` columns, ready to paste into a review mail.
Each primitive sits under the variant's helper call it is part of (the trace
records which one: see :mod:`shmpamt.explorer.hook`), each SEAMCALL is spelled
as its kernel wrapper with its status name, and the violation is marked under
the step it surfaced at.

What is drawn is cut to the race, by a rule that knows nothing of the variant:
a call (one ``tdx_pamt_get``/``tdx_pamt_put``, or one step of the workload
outside both, such as the AUG between them) is *expanded*, one line per
primitive, when another CPU took a step while it ran or when a violation
surfaced in it, or when it still ran where the drawing ends; so is a short
call (a fast path of at most :data:`SHORT_CALL` steps) that ran while such a
call of another CPU was running. Any other call is one line with what it did
to the refcount and the SEAMCALLs it made.
Calls that ended before the first expanded one began are not drawn: a line
per CPU counts them, and a line says the refcounts and PAMTs they left. The
drawing ends at the step the reported violation surfaced at (or at the end,
for the checks made after the last step). The only line that may be longer
than :data:`WIDTH` is the replay command, which is never broken.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from shmpamt import tdx
from shmpamt.machine.kernel import END_SUFFIX
from shmpamt.records.execution import TraceEvent
from shmpamt.records.schedule_string import Schedule
from shmpamt.records.violations import Violation, describe
from shmpamt.report.timeline import BOOL_OPS, SEAMCALLS, VALUE_OPS

#: columns of the whole report (a review mail's line)
WIDTH: Final = 72
#: steps a call may take to be drawn in full while another CPU's call races
SHORT_CALL: Final = 4
_GAP: Final = 2  # spaces between two CPUs' columns
_INDENT: Final = 2  # per nesting level, and for a wrapped line's continuation

_VOID_OPS: Final = frozenset({"atomic_inc", "atomic_dec"})
_END: Final = END_SUFFIX  # a two-step SEAMCALL's second point


def _leaf(op: str) -> str:
    """The SEAMCALL a point belongs to: ``X`` for the begin ``X`` and the end ``X.end``."""
    return op[: -len(_END)] if op.endswith(_END) else op


def _completes(e: TraceEvent) -> bool:
    """The point that answered the call's status (a begin that took its locks does not)."""
    return _leaf(e.op) in SEAMCALLS and e.result != tdx.SHMPAMT_LOCKS_HELD


#: how a collapsed call names the SEAMCALLs it made
_SHORT: Final = {
    "TDH.PHYMEM.PAMT.ADD": "ADD",
    "TDH.PHYMEM.PAMT.REMOVE": "REMOVE",
    "TDH.MEM.PAGE.AUG": "AUG",
    "TDH.PHYMEM.PAGE.RECLAIM": "RECLAIM",
}


@dataclass
class _Call:
    """One helper call of one CPU, or one workload step outside both helpers."""

    cpu: int
    call: int
    events: list[TraceEvent] = field(default_factory=list)
    expanded: bool = False
    #: the call's last step, also when the drawing ends before it
    until: int = -1

    @property
    def first(self) -> int:
        return self.events[0].step

    @property
    def last(self) -> int:
        return self.events[-1].step

    @property
    def helper(self) -> str:
        return self.events[0].helper

    def short(self) -> str:
        """The call in one word, for the line that counts earlier calls."""
        if self.helper:
            return self.helper.removeprefix("tdx_pamt_")
        op = self.events[0].op
        return _SHORT.get(op, op)


@dataclass(frozen=True)
class _Line:
    """A line of one CPU's column: text at a nesting depth (-1: across the columns)."""

    cpu: int
    depth: int
    text: str


def _ascii(text: str) -> str:
    return text.replace("→", "->").encode("ascii", "replace").decode("ascii")


def _seamcall(op: str) -> str:
    """A SEAMCALL leaf as the kernel's wrapper calls it: tdh_phymem_pamt_remove()."""
    return op.lower().replace(".", "_")


def _primitive(e: TraceEvent, ranges: bool) -> str:
    """One step in the kernel's words: ``atomic_dec_and_test() == true``."""
    op = e.op
    if op.startswith("atomic"):
        arg = f"rc[{e.target}]" if ranges else ""
        if op == "atomic_set":
            return f"atomic_set({arg + ', ' if arg else ''}{e.result})"
        text = f"{op}({arg})"
        if op in BOOL_OPS:
            return f"{text} == {'true' if e.result else 'false'}"
        if op in VALUE_OPS or op == "atomic_read":
            return f"{text} == {e.result}"
        if op in _VOID_OPS and e.before is not None and e.after is not None:
            return f"{text} // {e.before} -> {e.after}"
        return text
    if op in ("spin_lock", "spin_unlock"):
        return f"{op}(&pamt_lock)"
    # A status the search injected says so: the race needed that fault.
    injected = f" /* {e.note} */" if e.note else ""
    if _leaf(op) in SEAMCALLS:
        arg = f"range {e.target}" if ranges and e.target >= 0 else ""
        if e.result == tdx.SHMPAMT_LOCKS_HELD:
            return f"{_seamcall(op)}({arg}) // begins: its PAMT entry locks held"
        status = tdx.status_name(e.result) if e.note else tdx.describe_status(e.result)
        return f"{_seamcall(_leaf(op))}({arg}) == {status}{injected}"
    if op == "alloc_page":
        return "alloc_page()" if e.result else f"alloc_page() == NULL{injected}"
    if op == "free_page":
        return "__free_page()"
    return f"{op}()"


def _summary(c: _Call, ranges: bool) -> str:
    """A collapsed call in one line: what it did to its refcount, the SEAMCALLs it made."""
    if not c.helper:
        return _primitive(c.events[0], ranges)
    atomics = [e for e in c.events if e.op.startswith("atomic") and e.before is not None]
    done = []
    if atomics:
        first, last = atomics[0], atomics[-1]
        if first.before != last.after:
            done.append(f"{first.before} -> {last.after}")
    for e in c.events:
        if _completes(e):
            name = _SHORT.get(_leaf(e.op), _leaf(e.op))
            if e.result == tdx.TDX_SUCCESS:
                status = ""
            elif e.note:  # injected: the note names the fault
                status = f" {tdx.status_name(e.result)} ({e.note})"
            else:
                status = f" {tdx.describe_status(e.result)}"
            done.append(f"{name}{status}")
    arg = f"rc[{atomics[0].target}]" if ranges and atomics else ""
    return f"{c.helper}({arg})" + (f" // {', '.join(done)}" if done else "")


def _calls(events: Sequence[TraceEvent]) -> list[_Call]:
    """Steps grouped into calls, in the order the calls began."""
    out: list[_Call] = []
    open_: dict[int, _Call] = {}
    for e in events:
        c = open_.get(e.cpu)
        if c is None or not e.call or c.call != e.call:
            c = _Call(e.cpu, e.call)
            out.append(c)
            open_[e.cpu] = c
        c.events.append(e)
    return out


def _state(events: Sequence[TraceEvent], start: int, ranges: bool) -> str:
    """The refcounts and PAMTs as the drawn steps find them (before step ``start``)."""
    value: dict[int, int] = {}
    read: set[int] = set()  # refcounts whose value at ``start`` a later atomic saw
    for e in events:
        if not e.op.startswith("atomic") or e.before is None or e.target < 0:
            continue
        if e.step < start:
            value[e.target] = e.before if e.after is None else e.after
        elif e.target not in read:
            read.add(e.target)
            value[e.target] = e.before
    present: dict[int, bool] = {}
    for e in events[:start]:
        if e.result == tdx.TDX_SUCCESS and _leaf(e.op) == "TDH.PHYMEM.PAMT.ADD":
            present[e.target] = True
        elif e.result == tdx.TDX_SUCCESS and _leaf(e.op) == "TDH.PHYMEM.PAMT.REMOVE":
            present[e.target] = False
    parts = []
    for r in sorted(value):
        pamt = "present" if present.get(r, False) else "absent"
        name = f"rc[{r}]" if ranges else "refcount"
        parts.append(f"{name} == {value[r]}, PAMT {pamt}")
    return "; ".join(parts)


def race_report(
    events: Sequence[TraceEvent],
    violations: Sequence[tuple[int, Violation]],
    *,
    variant: str,
    kind: str = "",
    schedule: str = "",
) -> str:
    """The race of one execution, drawn for ``kind`` (default: its first violation).

    ``events``: the execution's trace; ``violations``: (step, violation) as the
    execution recorded them; ``schedule``: the string that replays it.
    """
    ordered = sorted(violations, key=lambda sv: sv[0])
    featured = next((sv for sv in ordered if not kind or sv[1].name == kind), None)
    if kind and featured is None:
        raise ValueError(f"{kind} is not among the execution's violations")
    end = len(events) - 1 if featured is None else min(featured[0], len(events) - 1)
    shown = [e for e in events if e.step <= end]
    marks: dict[int, list[Violation]] = {}
    for step, v in ordered:
        if step <= end:
            marks.setdefault(step, []).append(v)
    ranges = len({e.target for e in shown if e.op.startswith("atomic")}) > 1
    calls = _cut(events, end, marks)
    start = min((c.first for c in calls if c.expanded), default=0)
    cpus = sorted({c.cpu for c in calls})

    out = _wrap_across(_head(variant, featured, schedule))
    state = _state(events, start, ranges)
    if state:
        out += _wrap_across((f"At step {start}: " if start else "At the start: ") + state)
    out.append("")
    out += _columns(_drawing(calls, shown, start, marks, ranges), cpus)
    out.append("")
    if featured is not None:
        step, v = featured
        where = "after the last step" if step >= len(events) else f"step {step}"
        out += _wrap_across(f"{v.name} ({where}): {describe(v)}")
    if ranges:
        out += _wrap_across("rc[r]: the PAMT refcount of 2 MiB range r")
    if schedule:
        out.append(f"Replay: shmpamt replay {schedule}")
    return "\n".join(_ascii(line).rstrip() for line in out) + "\n"


def _cut(events: Sequence[TraceEvent], end: int, marks: dict[int, list[Violation]]) -> list[_Call]:
    """The calls begun by step ``end``, cut there, each told whether it is drawn in full
    (see the module docstring for the rule)."""
    shown = [e for e in events if e.step <= end]
    calls = []
    for c in _calls(events):
        if c.first > end:
            continue
        # A call still running when the drawing ends is part of the race: in flight.
        in_flight = c.last > end
        c.until = c.last
        c.events = [e for e in c.events if e.step <= end]
        steps = range(c.first + 1, c.last)
        others = any(e.cpu != c.cpu and e.step in steps for e in shown)
        c.expanded = in_flight or others or any(e.step in marks for e in c.events)
        calls.append(c)
    racing = [c for c in calls if c.expanded]
    for c in calls:
        # A short call (a fast path) that ran while another CPU's call was racing is
        # drawn too: one line more shows what it saw.
        if not c.expanded and len(c.events) <= SHORT_CALL:
            c.expanded = any(
                b.cpu != c.cpu and b.first < c.first and c.last < b.until for b in racing
            )
    return calls


def _drawing(
    calls: list[_Call],
    shown: Sequence[TraceEvent],
    start: int,
    marks: dict[int, list[Violation]],
    ranges: bool,
) -> list[_Line]:
    """The lines of the CPUs' columns, in time order: the earlier calls counted, then
    each drawn call's header and nested primitives, or its one line."""
    lines: list[_Line] = []
    for cpu in sorted({c.cpu for c in calls}):
        # a two-step SEAMCALL's end counts with its begin
        mine = [
            c.short()
            for c in calls
            if c.cpu == cpu and c.last < start and not c.events[0].op.endswith(_END)
        ]
        if mine:
            lines.append(_Line(cpu, 0, f"[earlier: {', '.join(mine)}]"))
    drawn = [c for c in calls if c.last >= start]
    owner = {e.step: c for c in drawn for e in c.events}
    for e in (e for e in shown if e.step >= start):
        c = owner[e.step]
        if not c.expanded:
            if e.step == c.first:
                lines.append(_Line(c.cpu, 0, _summary(c, ranges)))
            continue
        depth = 0
        if c.helper:
            if e.step == c.first:
                lines.append(_Line(c.cpu, 0, f"{c.helper}()"))
            depth = 1
        lines.append(_Line(c.cpu, depth, _primitive(e, ranges)))
        for v in marks.get(e.step, []):
            lines.append(_Line(c.cpu, depth, f"^^^ {v.name}"))
    return lines


def _head(variant: str, featured: tuple[int, Violation] | None, schedule: str) -> str:
    """The first line: the variant, the kind drawn, the scenario of the schedule."""
    head = f"{variant}: {featured[1].name}" if featured is not None else f"{variant}: no violation"
    try:
        s = Schedule.parse(schedule) if schedule else None
    except ValueError:
        s = None
    if s is not None:
        head += (
            f" ({s.cpus} CPUs x {s.rounds} round{'s' if s.rounds > 1 else ''},"
            f" {s.ranges} range{'s' if s.ranges > 1 else ''})"
        )
    return head


def _wrap_across(text: str) -> list[str]:
    return textwrap.wrap(_ascii(text), WIDTH, subsequent_indent=" " * _INDENT) or [""]


def _columns(lines: Sequence[_Line], cpus: list[int]) -> list[str]:
    """The lines laid out side by side, one column per CPU, each wrapped in its column."""
    n = max(1, len(cpus))
    width = (WIDTH - _GAP * (n - 1)) // n
    col = {cpu: i for i, cpu in enumerate(cpus)}

    def row(i: int, text: str) -> str:
        return (" " * ((width + _GAP) * i) + text).rstrip()

    out = [
        "".join(f"CPU {c}".ljust(width + _GAP) for c in cpus).rstrip(),
        "".join(("-" * len(f"CPU {c}")).ljust(width + _GAP) for c in cpus).rstrip(),
    ]
    for line in lines:
        pad = " " * min(_INDENT * line.depth, max(0, width - 6))
        room = width - len(pad)
        for part in _fit(_ascii(line.text), room):
            out.append(row(col[line.cpu], pad + part))
    return out


def _fit(text: str, room: int) -> list[str]:
    """``text`` in lines of at most ``room`` columns; a result goes to its own line
    (``== TDX_SUCCESS`` under the call) before anything else is broken."""
    if len(text) <= room:
        return [text]
    head, sep, tail = text.partition(" == ")
    if sep and len(head) <= room:
        return [head, *_fit_rest("== " + tail, room)]
    return _fit_rest(text, room, first=True)


def _fit_rest(text: str, room: int, first: bool = False) -> list[str]:
    indent = " " * _INDENT
    return textwrap.wrap(
        text,
        room,
        initial_indent="" if first else indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )
