"""Results of a run and their two renderings: a verdict table and JSON.

The JSON schema is part of the interface: per variant the violation names
found with counts and one example each, operations done, seed, incidents.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shmpamt.invariants import VIOLATIONS, Violation, describe

EXIT_CLEAN = 0
EXIT_VIOLATIONS = 1
EXIT_ERROR = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


@dataclass(frozen=True)
class VariantResult:
    variant: str
    mode: str  # "stress" | "explore"
    seed: int
    cpus: int
    operations: int
    elapsed_s: float
    counts: dict[str, int]
    examples: dict[str, Violation]
    incidents: tuple[str, ...] = ()
    faults_injected: int = 0
    quiescence_checked: bool = True
    schedules: tuple[str, ...] = ()  # failing schedules (explore), replayable
    coverage: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def found(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}

    @property
    def clean(self) -> bool:
        return not self.found

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "mode": self.mode,
            "seed": self.seed,
            "cpus": self.cpus,
            "operations": self.operations,
            "elapsed_s": round(self.elapsed_s, 3),
            "verdict": sorted(self.found),
            "violations": {
                name: {"count": n, "example": self.examples[name].to_dict()}
                if name in self.examples
                else {"count": n}
                for name, n in self.found.items()
            },
            "faults_injected": self.faults_injected,
            "quiescence_checked": self.quiescence_checked,
            "incidents": list(self.incidents),
            "schedules": [{"schedule": s, "replay": f"shmpamt replay {s}"} for s in self.schedules],
            "coverage": self.coverage,
            **self.extra,
        }


@dataclass
class Campaign:
    results: list[VariantResult] = field(default_factory=list)
    interrupted: str = ""  # "SIGINT"/"SIGTERM" when stopped early
    error: str = ""

    def exit_code(self) -> int:
        if self.interrupted == "SIGINT":
            return EXIT_SIGINT
        if self.interrupted == "SIGTERM":
            return EXIT_SIGTERM
        if any(not r.clean for r in self.results):
            return EXIT_VIOLATIONS
        if self.error or any(r.incidents for r in self.results):
            return EXIT_ERROR
        return EXIT_CLEAN

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": "shmpamt",
            "schema": 1,
            "complete": not self.interrupted and not self.error,
            "interrupted": self.interrupted or None,
            "error": self.error or None,
            "exit_status": self.exit_code(),
            "variants": [r.to_dict() for r in self.results],
        }

    def write_json(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)

    def render(self, console: Console) -> None:
        if self.results:
            self._render_table(console)
        if self.interrupted:
            console.print(f"[yellow]interrupted by {self.interrupted}: partial report[/yellow]")
        if self.error:
            console.print(f"[red]error:[/red] {self.error}")

    def _render_table(self, console: Console) -> None:
        table = Table(title="verdict: violations found per variant", title_justify="left")
        table.add_column("variant", style="bold", no_wrap=True)
        names = [n for n in VIOLATIONS if any(r.counts.get(n) for r in self.results)]
        for n in names:
            # one word per line keeps eight violation columns inside 80 columns
            table.add_column(n.replace("_", "\n"), justify="right")
        table.add_column("ops", justify="right")
        table.add_column("verdict", no_wrap=True)
        for r in self.results:
            cells = [compact(r.counts.get(n, 0)) for n in names]
            if r.clean and not r.incidents:
                verdict = "[green]clean[/green]"
            elif r.clean:
                verdict = "[yellow]incident[/yellow]"
            else:
                verdict = (
                    f"[red]{len(r.found)} kinds[/red]" if len(r.found) > 1 else "[red]1 kind[/red]"
                )
            table.add_row(r.variant, *cells, compact(r.operations), verdict)
        console.print(table)
        for r in self.results:
            for name in sorted(r.found):
                ex = r.examples.get(name)
                if ex is not None:
                    console.print(f"  [bold]{r.variant}[/bold] {name}: {describe(ex)}")
            for s in r.schedules[:1]:
                console.print(f"  [bold]{r.variant}[/bold] replay: [cyan]shmpamt replay {s}[/cyan]")
            for inc in r.incidents:
                console.print(f"  [bold]{r.variant}[/bold] [yellow]incident[/yellow]: {inc}")
            if r.coverage:
                console.print(f"  [bold]{r.variant}[/bold] coverage: {r.coverage}")


def compact(n: int) -> str:
    """Counts that fit a narrow column: 7, 812, 4.3k, 81k, 1.2M; "·" for none."""
    if n == 0:
        return "·"
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 9.95 else f"{v:.0f}{unit}"
    return str(n)


def first_examples(records: list[Violation]) -> dict[str, Violation]:
    out: dict[str, Violation] = {}
    for v in records:
        out.setdefault(v.name, v)
    return out
