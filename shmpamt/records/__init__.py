"""Light records: the violation catalogue, what an execution did, run results,
schedule strings, per-variant verdicts and the failure database. No IPC, no cffi:
the CLI, the plugin and the report read them without starting a machine."""
