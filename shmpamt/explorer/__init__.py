"""Controlled scheduling: the board the controller and the CPUs share, the CPU
hook that parks before every primitive, the controller session, the search loop,
parallel jobs, stored-failure regressions, footprints and the minimiser."""
