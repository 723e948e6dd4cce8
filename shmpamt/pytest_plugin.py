"""pytest plugin (registered as a ``pytest11`` entry point); imports nothing heavy at load time."""

from __future__ import annotations
