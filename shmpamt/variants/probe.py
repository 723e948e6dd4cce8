"""Probe a user's variant in a throwaway process before this one imports it.

Importing a variant file runs its code. Code that calls ``os._exit``, raises
``KeyboardInterrupt`` or sleeps forever at import would take the CLI (or the
caller's test process) down with it, or hang it. A probe imports the spec in a
child first, with a time limit, and turns whatever happens there into one
:class:`~shmpamt.errors.VariantLoadError` line naming the variant. Built-in
names and C files (compiled, never executed at load) need no probe.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Final

from shmpamt.errors import VariantLoadError

#: seconds an import may take before the variant counts as hanging
PROBE_TIMEOUT: Final = 30.0
_MARK: Final = "shmpamt-probe:"
_CHILD: Final = f"""
import sys
try:
    from shmpamt.variants.registry import load_variant
    load_variant(sys.argv[1])
except BaseException as e:
    msg = str(e) if type(e).__name__ == "VariantLoadError" else (
        f"variant {{sys.argv[1]}}: importing it raised {{type(e).__name__}}"
        + (f": {{e}}" if str(e) else ""))
    print({_MARK!r} + " ".join(msg.split()), file=sys.stderr, flush=True)
    sys.exit(1)
"""
_probed: set[tuple[str, float]] = set()


def needs_probe(spec: str, builtin: frozenset[str]) -> bool:
    where = spec.rpartition(":")[0] or spec
    return spec not in builtin and not where.endswith(".c") and not spec.endswith(".c")


def probe(spec: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise VariantLoadError unless ``spec`` imports cleanly in a child within ``timeout``."""
    path = spec.rpartition(":")[0]
    try:
        stamp = os.stat(path).st_mtime if path else 0.0
    except OSError:
        stamp = -1.0  # missing: let the child say so in the loader's own words
    if (spec, stamp) in _probed:
        return
    try:
        r = subprocess.run(
            [sys.executable, "-c", _CHILD, spec],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            # the child must not die of the user's Ctrl-C before we decide what it means
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    except subprocess.TimeoutExpired:
        raise VariantLoadError(
            f"variant {spec}: importing it did not finish within {timeout:g} s"
        ) from None
    if r.returncode == 0:
        _probed.add((spec, stamp))
        return
    said = [line for line in r.stderr.splitlines() if line.startswith(_MARK)]
    if said:
        raise VariantLoadError(said[-1][len(_MARK) :])
    if r.returncode < 0:
        how = f"was killed by {signal.Signals(-r.returncode).name}"
    else:
        how = f"exited with status {r.returncode}"
    raise VariantLoadError(f"variant {spec}: the process importing it {how}")
