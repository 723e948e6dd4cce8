"""Campaign misuse, without a cluster: every mistake is one line and exit 2 at once,
before Dask starts (a scheduler address without a port, an oversized matrix, a matrix
file that is not text)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shmpamt.api import default_variants
from shmpamt.campaign.address import check_scheduler, check_tls
from shmpamt.campaign.matrix import MAX_SHARDS, SHARD_KINDS, Plan
from shmpamt.errors import UsageError


@pytest.mark.parametrize(
    ("address", "word"),
    [
        ("notaurl", "no port"),
        ("", "empty"),
        ("   ", "empty"),
        ("host", "no port"),
        ("host:", "no port"),
        ("tcp://host:0", "1 to 65535"),
        ("tcp://host:http", "1 to 65535"),
        ("http://host:8786", "unknown scheme"),
        ("tcp://::1:8786", "brackets"),
        ("tcp://a/b:8786", "not a host"),
    ],
)
def test_a_malformed_scheduler_address_is_named(address: str, word: str) -> None:
    with pytest.raises(UsageError, match=word) as e:
        check_scheduler(address)
    assert e.value.field == "scheduler"


def test_a_good_address_is_normalised() -> None:
    assert check_scheduler("host-a:8786") == "tcp://host-a:8786"
    assert check_scheduler(" TLS://10.0.0.1:8786 ") == "tls://10.0.0.1:8786"
    assert check_scheduler("tcp://[::1]:8786") == "tcp://[::1]:8786"


def test_tls_needs_its_settings() -> None:
    with pytest.raises(UsageError, match=r"ca-file, client\.cert"):
        check_tls("tls://h:8786", lambda key: None)
    check_tls("tls://h:8786", lambda key: "/some/file")
    check_tls("tcp://h:8786", lambda key: None)  # plain tcp needs none


def _cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "shmpamt", "campaign", *args, "--db", "off"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    return r, time.monotonic() - t0


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("scheduler", "word"),
    [
        ("notaurl", "no port"),
        ("", "empty"),
        ("host", "no port"),
        ("tls://127.0.0.1:8786", "TLS settings"),
        ("tcp://no-such-host.invalid:8786", "cannot resolve"),
    ],
)
def test_a_bad_scheduler_is_one_line_before_any_cluster_work(
    tmp_path: Path, scheduler: str, word: str
) -> None:
    """It used to wait 61 s and end in a traceback."""
    r, took = _cli("--variant", "locked", "--seeds", "1", "--scheduler", scheduler, cwd=tmp_path)
    assert word in _one_line(r)
    assert r.stdout == ""  # not even the plan's header: nothing started
    assert took < 30, took


def test_an_oversized_matrix_is_refused_at_once(tmp_path: Path) -> None:
    """Every built-in x 7 strategies x 100,000 seeds (millions of shards) used to be
    accepted, and hang."""
    names = default_variants()
    variants = [a for v in names for a in ("--variant", v)]
    strategies = [a for s in SHARD_KINDS[:7] for a in ("--strategy", s)]
    r, took = _cli(*variants, *strategies, "--seeds", "100000", cwd=tmp_path)
    line = _one_line(r)
    assert f"{len(names) * 7 * 100_000:,} shards" in line and f"{MAX_SHARDS:,}" in line
    assert took < 30, took


def test_the_bound_is_on_the_whole_matrix() -> None:
    Plan(("rfc",), ("pct",), seeds=MAX_SHARDS)  # exactly the bound: accepted
    with pytest.raises(UsageError, match="at most"):
        Plan(("rfc", "kai"), ("pct",), seeds=MAX_SHARDS // 2 + 1)
    p = Plan(("rfc", "kai"), ("pct", "stress"), seed=3, seeds=4, executions=1)
    assert p.size == 16 and [p.shard_id(i) for i in range(p.size)] == [s.id for s in p.shards()]


def test_a_matrix_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'variants = ["locked"]\n# \xff\xfe\n')
    assert "not UTF-8" in _one_line(_cli("--matrix", str(bad), cwd=tmp_path)[0])
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert "not a regular file" in _one_line(_cli("--matrix", str(fifo), cwd=tmp_path)[0])
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    assert "at most" in _one_line(_cli("--matrix", str(big), cwd=tmp_path)[0])


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--split-depth", "25"], "--split-depth must be within 0..24, not 25"),
        (["--split-depth", "-1"], "--split-depth must be within 0..24, not -1"),
        (["--split-depth", "two"], "'two' is not a valid integer"),
        (["--slice", "0"], "--slice must be within 1.."),
    ],
)
def test_a_bad_split_depth_or_slice_is_one_line_before_any_cluster_work(
    tmp_path: Path, args: list[str], word: str
) -> None:
    proof = ["--variant", "v6", "--strategy", "dpor", "--cpus", "2", "--rounds", "1"]
    r, took = _cli(*proof, *args, cwd=tmp_path)
    assert word in _one_line(r)
    assert r.stdout == "" and took < 30, (r.stdout, took)


@pytest.mark.parametrize(
    "flag", [["--split-depth", "4"], ["--no-symmetry"], ["--halt-at-violation"]]
)
def test_proof_options_without_a_proof_are_one_line(tmp_path: Path, flag: list[str]) -> None:
    r, _ = _cli("--variant", "locked", "--strategy", "random", *flag, cwd=tmp_path)
    assert "are for proofs: add --strategy dpor" in _one_line(r)


def test_a_halting_proof_with_ignored_kinds_is_refused_in_one_line(tmp_path: Path) -> None:
    proof = ["--variant", "rfc", "--strategy", "dpor", "--cpus", "2", "--rounds", "1"]
    r, took = _cli(*proof, "--halt-at-violation", "--ignore", "add_present", cwd=tmp_path)
    assert "--halt-at-violation with --ignore" in _one_line(r)
    assert r.returncode == 2 and took < 30, (r.stdout, took)


def test_ignore_on_the_command_line_reaches_the_plan(tmp_path: Path) -> None:
    # It used to be refused as "not a list of names" before any work.
    args = ["--variant", "rfc", "--strategy", "random", "--seeds", "1", "--budget", "1"]
    ignored = ["--ignore", "add_present", "--ignore", "remove_absent"]
    r, _ = _cli(*args, *ignored, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no violation (outside --ignore)" in r.stdout
