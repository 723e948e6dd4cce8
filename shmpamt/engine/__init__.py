"""The engine: one owner of a run's processes, and the two drivers that use it.

``processes`` starts, watches and stops the CPUs (the module daemon comes with
the :class:`~shmpamt.system.System`); ``stress`` lets them run free;
``explore`` grants them one step at a time. Front ends (CLI, library, pytest
plugin) reach the engine through :mod:`shmpamt.api` only.
"""
