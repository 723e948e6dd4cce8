"""Presentation: the verdict table and JSON report, swim-lane timelines."""
