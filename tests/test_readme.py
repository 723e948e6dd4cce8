"""The README is the first thing a newcomer reads: it stays short, and its sample output
is what the command really prints (the shape, not the counts and timings)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_LINES = 150


def _sample() -> tuple[list[str], list[str]]:
    """(the sample's command, its output lines) from the README's "What it prints"."""
    text = README.read_text()
    section = text.split("## What it prints", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"`(shmpamt stress [^`]+)`", section)
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert command and block, "the README lost its sample"
    return shlex.split(command.group(1)), block.group(1).splitlines()


def _cells(line: str, sep: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(sep).split(sep)]


def _rows(lines: list[str]) -> dict[str, str]:
    """variant -> its result cell, from the verdict table's body rows."""
    rows = {}
    for line in lines:
        if line.startswith("│"):
            cells = _cells(line, "│")
            if cells[0]:
                rows[cells[0]] = cells[1]
    return rows


def _replays(lines: list[str]) -> set[tuple[str, str]]:
    """(variant, kind) for every replay line, whose command must be whole on its line."""
    found = set()
    for line in lines:
        m = re.fullmatch(r"  (\S+) (\w+): shmpamt replay (s\d+:\S+)\s*", line)
        if m:
            found.add((m.group(1), m.group(2)))
    return found


def test_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines (at most {MAX_LINES})"
    # Invariant: the two commands a newcomer types come first.
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    first = lines[fences[0] + 1 : fences[1]]
    assert first[0].endswith("shmpamt stress") and "pytest -n auto" in first[1], first


@pytest.mark.xdist_group("readme")
def test_readme_sample_has_the_shape_of_real_output(tmp_path: Path) -> None:
    argv, sample = _sample()
    exe = os.path.join(os.path.dirname(sys.executable), "shmpamt")
    real = subprocess.run(
        [exe, *argv[1:], "--duration", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # its failure database goes there, not into the checkout
        env={**os.environ, "COLUMNS": "120"},  # the sample is 120 columns wide
    )
    assert real.returncode == 1, real.stderr
    out = real.stdout.splitlines()

    # Invariant: the table's columns are the ones the sample shows.
    head = next(line for line in sample if line.startswith("┃"))
    assert head in out, (head, out)
    # Invariant: every variant of the sample has its row, clean exactly where the sample is.
    want, got = _rows(sample), _rows(out)
    assert set(want) == set(got), (want, got)
    for variant, result in want.items():
        assert (result == "clean") == (got[variant] == "clean"), (variant, result, got[variant])
        assert re.fullmatch(r"clean|\d+ kinds? \(.*\)", got[variant]), got[variant]
    # Invariant: each replay line the sample shows exists in the real output, whole.
    assert _replays(sample) <= _replays(out), (_replays(sample), _replays(out))
    # Invariant: the closing lines are the same words.
    for line in sample[-2:]:
        assert line in out, (line, out[-6:])
