"""One root for every error shmpamt raises, so callers catch one thing.

The tree (hypothesis's shape: a usage error is also a ``ValueError``)::

    ShmpamtError
    +-- UsageError (also ValueError)      the caller asked for something impossible
    |   +-- VariantLoadError              a --variant spec that cannot be used
    |   +-- ScheduleError                 a malformed schedule string
    +-- RunFailure                        the rig could not finish a run
    |   +-- ModuleFailure                 the TDX module daemon died, hung, or did not start
    |   +-- CpuCrashed                    a CPU process died or stopped answering
    |   +-- SchedulingError               a schedule did not fit the execution it drove
    +-- IpcError                          a named object is missing, foreign or malformed
    +-- LockError                         pamt_lock broke (dead holder, corruption)
    +-- DatabaseError                     the failure database cannot be read or written

Only this module defines the roots; each concept keeps its own subclasses beside
the code that raises them. The CLI maps the tree to exit codes in one place.
"""

from __future__ import annotations


class ShmpamtError(Exception):
    """Anything shmpamt raises on purpose."""


class UsageError(ShmpamtError, ValueError):
    """Bad input from the caller; the message is one line saying what to change.

    ``field`` names the setting (``cpus``, ``budget``...) when there is one, so a
    front end can point at its own spelling of it (``--cpus``).
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class VariantLoadError(UsageError):
    """A variant spec that cannot be used; the message is one line naming the cause."""


class ScheduleError(UsageError):
    """A schedule string or value that is malformed; the message says what is wrong."""


class RunFailure(ShmpamtError):
    """The rig itself could not complete a run (not a verdict on the variant)."""


class ModuleFailure(RunFailure):
    """The TDX module daemon failed: it died, hung, or never came up."""


class CpuCrashed(RunFailure):
    """A CPU process died or stopped reaching its scheduling points."""


class SchedulingError(RunFailure):
    """An execution did not behave as its schedule promised."""


class IpcError(ShmpamtError):
    """A named object is missing, foreign, or not what the caller expected."""


class LockError(ShmpamtError):
    """Base class for pamt_lock failures."""


class DatabaseError(ShmpamtError):
    """The failure database cannot be read or written (a link where its folder should be,
    a read-only or full filesystem); the message is one line naming the path."""
