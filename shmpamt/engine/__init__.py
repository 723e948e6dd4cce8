"""The engine: process lifetimes, and free-running stress on top of them.

``system`` holds one run's IPC objects and the module daemon; ``cpu`` and
``workload`` are a CPU process's life and what it does in a round;
``processes`` starts, watches and stops the CPUs; ``stress`` lets them run
free. Controlled scheduling builds on this in :mod:`shmpamt.explorer`. Front
ends (CLI, library, pytest plugin) reach the engine through :mod:`shmpamt.api`
only.
"""
