"""Light records: the violation catalogue, what an execution did, run results,
schedule strings, per-variant verdicts, the failure database and the safe writing of
the files the rig leaves behind. No IPC, no cffi:
the CLI, the plugin and the report read them without starting a machine."""
