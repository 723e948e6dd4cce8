"""A campaign's results and their two renderings: a verdict table and JSON.

The JSON schema is part of the interface: per variant the violation names
found with counts and one example each, what was ignored, operations done,
seed, incidents, and for explore/replay one replayable schedule per kind.
The table is one line per variant, so it stays readable at 80 columns.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shmpamt.errors import ScheduleError
from shmpamt.machine.kernel import module_semantics
from shmpamt.records.faildb import DB_NOTE
from shmpamt.records.publish import check_target, reason, write_file
from shmpamt.records.results import VariantResult, regression_line
from shmpamt.records.schedule_string import Schedule
from shmpamt.records.verdict import BOTH, STRESS_ONLY, Verdict, verdicts
from shmpamt.records.violations import VIOLATIONS, describe

EXIT_CLEAN: Final = 0
EXIT_VIOLATIONS: Final = 1
EXIT_ERROR: Final = 2
EXIT_SIGINT: Final = 130
EXIT_SIGTERM: Final = 143
#: what each exit status means, for --help and the report's last line
EXIT_MEANING: Final = {
    EXIT_CLEAN: "no violation (outside --ignore) and no incident",
    EXIT_VIOLATIONS: "violations found",
    EXIT_ERROR: "bad usage, or the rig failed (an incident); one line on stderr",
    EXIT_SIGINT: "stopped by SIGINT (Ctrl-C), after a partial report",
    EXIT_SIGTERM: "stopped by SIGTERM, after a partial report",
}


@dataclass
class Report:
    results: list[VariantResult] = field(default_factory=list)
    interrupted: str = ""  # "SIGINT"/"SIGTERM" when stopped early
    error: str = ""
    #: the command line that reruns this campaign, for the report's last lines
    rerun: str = ""
    #: stress and explore ran for each variant: the report merges them per variant
    merged: bool = False

    def verdicts(self) -> list[Verdict]:
        return verdicts(self.results)

    def exit_code(self) -> int:
        if self.interrupted == "SIGINT":
            return EXIT_SIGINT
        if self.interrupted == "SIGTERM":
            return EXIT_SIGTERM
        if any(r.failing for r in self.results):
            return EXIT_VIOLATIONS
        if self.error or any(r.incidents for r in self.results):
            return EXIT_ERROR
        return EXIT_CLEAN

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "shmpamt",
            "schema": 2,
            # the module semantics the run was judged against, as every header names them
            "module": module_semantics(),
            "complete": not self.interrupted and not self.error,
            "interrupted": self.interrupted or None,
            "error": self.error or None,
            "exit_status": self.exit_code(),
            "variants": [r.to_dict() for r in self.results],
            "merged": [m.to_dict() for m in self.verdicts()] if self.merged else None,
        }

    def write_json(self, path: Path) -> None:
        """Write the JSON report whole or not at all (see records/publish.py): raises
        OSError; no temp file survives it."""
        write_file(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    # -- the terminal report ---------------------------------------------------------

    def render(self, console: Console) -> None:
        if self.results and self.merged:
            self._render_merged(console)
            self._render_summary(console)
        elif self.results:
            self._render_table(console)
            self._render_details(console)
            self._render_summary(console)
        if self.interrupted:
            console.print(f"[yellow]interrupted by {self.interrupted}: partial report[/yellow]")
        if self.error:
            console.print(f"[red]error:[/red] {self.error}")

    def _render_table(self, console: Console) -> None:
        bad = sum(1 for r in self.results if r.failing)
        title = "verdict: violations found" if bad else "verdict: no violation found"
        table = Table(title=title, title_justify="left", expand=False)
        table.add_column("variant", style="bold", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("kinds seen (count)", ratio=1)
        table.add_column("ops", justify="right", no_wrap=True)
        for r in self.results:
            tags = {f.kind: fault_tag(f.schedule) for f in r.findings}
            kinds = ", ".join(
                f"{n} {compact(r.counts[n])}"
                + tags.get(n, "")
                + (" (ignored)" if n in r.ignored else "")
                for n in VIOLATIONS
                if r.counts.get(n)
            )
            table.add_row(r.variant, _label(r), kinds or "-", compact(r.operations))
        console.print(table)

    def _render_details(self, console: Console) -> None:
        for r in self.results:
            # The regression check ran before the search: it is reported before it too.
            if r.regressions is not None:
                console.print(f"  [bold]{r.variant}[/bold] {regression_line(r.regressions)}")
                for g in r.regressions:
                    if g.still_fails:
                        print_command(
                            console,
                            f"  [bold]{r.variant}[/bold] still fails ({g.kind}): ",
                            f"shmpamt replay {g.schedule}",
                        )
            for name in (n for n in VIOLATIONS if n in r.found):
                ex = r.examples.get(name)
                if ex is not None:
                    console.print(f"  [bold]{r.variant}[/bold] {name}: {describe(ex)}")
            for f in r.findings:
                print_command(console, f"  [bold]{r.variant}[/bold] {f.kind}: ", f.replay_command)
            if r.ignored_seen and r.explore is not None:
                console.print(
                    f"  [bold]{r.variant}[/bold] {r.explore.ignored_only} execution(s) showed "
                    f"only ignored kinds ({', '.join(sorted(r.ignored_seen))})"
                )
            for note in r.notes:  # notes may quote untrusted files: never markup
                console.print(f"  [bold]{r.variant}[/bold] note: {escape(note)}")
            for inc in r.incidents:
                console.print(f"  [bold]{r.variant}[/bold] [yellow]incident[/yellow]: {inc}")
            if r.coverage:
                claim = f" ({r.explore.claim})" if r.explore is not None else ""
                console.print(f"  [bold]{r.variant}[/bold] shown{claim}: {r.coverage}")

    def _render_merged(self, console: Console) -> None:
        verdicts = self.verdicts()
        bad = any(m.failing for m in verdicts)
        title = "verdict (stress + explore): " + (
            "violations found" if bad else "no violation found"
        )
        table = Table(title=title, title_justify="left", expand=False)
        table.add_column("variant", style="bold", no_wrap=True)
        table.add_column("result", no_wrap=True)
        table.add_column("kinds seen [found by]", ratio=1)
        table.add_column("rounds / execs", justify="right", no_wrap=True)
        for m in verdicts:
            kinds = ", ".join(
                f"{k.kind} \\[{k.found_by}]"
                + (fault_tag(k.replay.split()[-1]) if k.replay else "")
                + (" (ignored)" if k.ignored else "")
                for k in m.kinds
            )
            ops = " / ".join(compact(r.operations) for r in m.parts)
            table.add_row(m.variant, _merged_label(m), kinds or "-", ops)
        console.print(table)
        for m in verdicts:
            for r in m.parts:  # replayed before the search: said before its findings
                if r.regressions is not None:
                    console.print(f"  [bold]{m.variant}[/bold] {regression_line(r.regressions)}")
                for note in r.notes:  # the database's notes; they quote untrusted files
                    if note.startswith(DB_NOTE):
                        console.print(f"  [bold]{m.variant}[/bold] note: {escape(note)}")
            for k in m.kinds:
                head = f"  [bold]{m.variant}[/bold] {k.kind}: "
                if k.replay:
                    print_command(console, head, k.replay)
                else:
                    console.print(f"{head}stress seed {k.seed}: [yellow]{k.note}[/yellow]")
            for r in m.parts:
                for inc in r.incidents:
                    console.print(f"  [bold]{m.variant}[/bold] [yellow]incident[/yellow]: {inc}")
                if r.coverage:
                    console.print(f"  [bold]{m.variant}[/bold] {r.mode} coverage: {r.coverage}")
        if any(k.replay for m in verdicts for k in m.kinds):
            print_command(
                console,
                "  explore schedules are reported unshrunk to keep the campaign short; "
                "this shrinks one: ",
                "shmpamt replay --minimize SCHEDULE",
            )

    def _render_summary(self, console: Console) -> None:
        rows = (
            [(m.variant, bool(m.failing), m.verdict == "clean") for m in self.verdicts()]
            if self.merged
            else [(r.variant, bool(r.failing), r.clean) for r in self.results]
        )
        bad = [v for v, failing, _ in rows if failing]
        ok = [v for v, _, clean in rows if clean]
        other = [v for v, failing, clean in rows if not failing and not clean]
        parts = [f"{len(bad)} of {len(rows)} variant(s) violate"]
        if ok:
            parts.append(f"clean: {', '.join(ok)}")
        if other:
            parts.append(f"not clean but no violation counted: {', '.join(other)}")
        console.print("; ".join(parts))
        code = self.exit_code()
        console.print(f"exit status {code}: {EXIT_MEANING.get(code, '')}")
        if self.rerun:
            print_command(console, "rerun this campaign: ", self.rerun)
        replayable = {(m.variant, k.kind) for m in self.verdicts() for k in m.kinds if k.replay}
        for r in self.results:
            if self.merged and all((r.variant, k) in replayable for k in r.failing):
                continue
            if r.failing and r.mode == "stress" and set(r.failing) - {f.kind for f in r.findings}:
                cmd = shlex.join(["shmpamt", "explore", "--variant", r.spec or r.variant])
                print_command(console, "find a replayable schedule: ", cmd)


def print_command(console: Console, head: str, command: str) -> None:
    """A line that ends in a command to paste (``head``: rich markup before it).

    Never wrapped or cut, at any width and whether or not the output is a
    terminal: a terminal folds it on screen but copies it as one line, a file
    or a CI log holds it on one line.
    """
    console.print(f"{head}[cyan]{escape(command)}[/cyan]", soft_wrap=True)


def _merged_label(m: Verdict) -> str:
    if m.failing:
        n = len(m.failing)
        only = sum(1 for k in m.kinds if k.found_by == STRESS_ONLY and not k.ignored)
        both = sum(1 for k in m.kinds if k.found_by == BOTH and not k.ignored)
        extra = f" ({both} by both" + (f", {only} stress only" if only else "") + ")"
        return f"[red]{n} kind{'s' if n > 1 else ''}[/red]{extra}"
    if m.incidents:
        return "[yellow]incident[/yellow]"
    if m.kinds:
        return "[yellow]ignored only[/yellow]"
    return "[green]clean[/green]"


def _label(r: VariantResult) -> str:
    if r.failing:
        n = len(r.failing)
        return f"[red]{n} kind{'s' if n > 1 else ''}[/red]"
    if r.incidents:
        return "[yellow]incident[/yellow]"
    if r.found:
        return "[yellow]ignored only[/yellow]"
    return "[green]clean[/green]"


def check_report_path(path: Path) -> None:
    """Reports go to regular files or new paths only: never replace a link, a FIFO or a
    device."""
    try:
        check_target(str(path))
    except OSError as e:
        if e.errno is None:  # check_target's own words already name the path
            raise
        raise OSError(f"{path}: {reason(e)}") from None


def compact(n: int) -> str:
    """Counts that fit a narrow column: 7, 812, 4.3k, 81k, 1.2M; "·" for none."""
    if n == 0:
        return "·"
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 9.95 else f"{v:.0f}{unit}"
    return str(n)


def fault_tag(schedule: str) -> str:
    """`` [fault: remove.busy]`` when the schedule that shows a kind needs injected
    faults (the shrunk one: a kind that needs none says nothing), else ""."""
    try:
        names = Schedule.parse(schedule).fault_names()
    except ScheduleError:
        return ""
    return f" \\[fault: {', '.join(names)}]" if names else ""
