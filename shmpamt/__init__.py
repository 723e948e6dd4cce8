"""shmpamt: a torture-test rig for the TDX Dynamic PAMT refcount helpers."""

__version__ = "0.1.0"
