"""A CPU's process misbehaving: it exits on its own with status 0, or it leaves processes
behind (a child, a daemon in a session of its own). Each is an incident, never "clean",
and nothing a CPU started outlives the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import shmpamt
from shmpamt.machine import children
from shmpamt.machine.ipc import pid_alive

HERE = Path(__file__).resolve().parent
HOSTILE = HERE / "hostile_variants.py"


@pytest.mark.parametrize("how", [{"iterations": 20}, {"duration": 6.0}])
def test_a_cpu_that_exits_0_on_its_own_is_an_incident(how: dict[str, float]) -> None:
    r = shmpamt.stress(f"{HOSTILE}:GetExitsZero", cpus=2, ranges=1, seed=1, **how)  # type: ignore[arg-type]
    assert not r.ok and not r.clean
    assert any("exited on its own with status 0" in i for i in r.incidents), r.incidents


def test_the_cli_never_calls_a_cpu_that_exited_0_clean() -> None:
    cmd = [sys.executable, "-m", "shmpamt", "stress", "--variant", f"{HOSTILE}:GetExitsZero"]
    r = subprocess.run(
        [*cmd, "--duration", "6", "--cpus", "2", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "exited on its own with status 0" in r.stdout
    assert "clean: " not in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_a_c_variant_that_calls_exit_0_is_an_incident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C twin of locked, but its fifth get calls exit(0)."""
    monkeypatch.setenv("SHMPAMT_CACHE_DIR", str(tmp_path / "cache"))
    twins = Path(shmpamt.__file__).parent / "variants" / "c"
    (tmp_path / "common.h").write_text((twins / "common.h").read_text())
    source = (twins / "locked.c").read_text()
    head = "static int tdx_pamt_get(struct page *page)\n{\n"
    assert head in source
    source = source.replace(head, head + "\tstatic int gets;\n\tif (++gets == 5)\n\t\texit(0);\n")
    f = tmp_path / "exits.c"
    f.write_text("#include <stdlib.h>\n" + source)
    r = shmpamt.stress(str(f), cpus=2, ranges=1, duration=6.0, seed=1)
    assert not r.ok
    assert any("exited on its own with status 0" in i for i in r.incidents), r.incidents


def _strays(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir()]


@pytest.mark.parametrize("variant", ["ForksChild", "ForksDaemon"])
@pytest.mark.parametrize("mode", ["stress", "explore"])
def test_what_a_cpu_starts_does_not_outlive_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, mode: str
) -> None:
    monkeypatch.setenv("SHMPAMT_TEST_STRAYS", str(tmp_path))
    spec = f"{HOSTILE}:{variant}"
    if mode == "stress":
        r = shmpamt.stress(spec, cpus=2, ranges=1, iterations=20, seed=1)
    else:
        r = shmpamt.explore(spec, executions=10, seed=1, jobs=1)
    strays = _strays(tmp_path)
    assert len(strays) == 2, strays  # one per CPU
    # Invariant: nothing a CPU started is still running once the run has returned.
    assert [p for p in strays if pid_alive(p)] == []
    assert not r.ok
    said = [i for i in r.incidents if "started by a CPU, was still running after the run" in i]
    assert sorted(said) == sorted(
        f"pid {p} (a forked copy of a CPU process), started by a CPU, was still running "
        "after the run and was killed"
        for p in strays
    ), r.incidents


def test_a_clean_run_reports_no_stray_and_gives_up_being_a_subreaper() -> None:
    assert not children._is_subreaper()
    r = shmpamt.stress("locked", cpus=2, ranges=1, iterations=20, seed=1)
    assert r.clean and not r.incidents, r.incidents
    assert not children._is_subreaper()


def test_the_sweep_spares_children_from_before_and_started_ones() -> None:
    """A process of the embedding program (here: a sleeping child) is never a stray."""
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = children.Descendants()
        later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        children.started(later.pid)
        stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            found = owner.sweep()
            assert [f.split()[1] for f in found] == [str(stray.pid)]
            assert not pid_alive(stray.pid)  # killed, and collected by the sweep
            assert mine.poll() is None and later.poll() is None
        finally:
            owner.close()
            stray.kill()
            stray.wait(5)  # (already collected by the sweep: Popen just notes it)
            children.ended(later.pid)
            later.kill()
            later.wait()
    finally:
        mine.kill()
        mine.wait()


def test_sigint_is_held_while_spawning_and_ignored_by_the_child() -> None:
    """A Ctrl-C during the spawn reaches the parent's handler (never dropped, as an
    ignored one would be), and the child, which starts with it blocked, ignores it."""
    import signal

    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    try:
        code = (
            "import os, signal, time, sys\n"
            "from shmpamt.machine.children import ignore_sigint\n"
            "blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())\n"
            "ignore_sigint()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.1)\n"
            "sys.exit(0 if blocked else 5)\n"
        )
        with children.sigint_held():
            child = subprocess.Popen([sys.executable, "-c", code])
            os.kill(os.getpid(), signal.SIGINT)  # held back (or taken by another thread)
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [signal.SIGINT]
        assert child.wait(60) == 0
    finally:
        signal.signal(signal.SIGINT, old)


_FIRST_SPAWN = """
import multiprocessing as mp, os, signal, sys
from shmpamt.machine.children import sigint_held

def entry():
    os._exit(0 if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set()) else 3)

if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=entry)
    with sigint_held():
        p.start()  # this process's first spawn: multiprocessing starts its tracker now
    p.join()
    sys.exit(p.exitcode)
"""


def test_the_first_spawn_still_starts_with_sigint_blocked(tmp_path: Path) -> None:
    """multiprocessing's resource tracker, started at a process's first spawn, unblocks
    SIGINT behind the caller's back; a daemon spawned right then died of a Ctrl-C."""
    script = tmp_path / "first_spawn.py"
    script.write_text(_FIRST_SPAWN)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)


def test_a_cpu_still_starting_when_the_run_ends_is_a_note_not_a_wait() -> None:
    """It holds nothing, so it is stopped at once (not waited out for 10 s and then
    called an incident), and the others' run is judged in full."""
    t0 = time.monotonic()
    r = shmpamt.stress(f"{HERE / 'slow_start_variant.py'}:SlowStart", cpus=2, duration=4.0)
    assert time.monotonic() - t0 < 30
    assert r.clean and not r.incidents, r.incidents
    assert r.raw.quiescence_checked and r.raw.operations > 0
    assert "cpu 1 of 2 had not started when the run stopped" in r.raw.notes
