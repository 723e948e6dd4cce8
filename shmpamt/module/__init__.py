"""The TDX module emulator: PAMT state and transitions, the daemon process, fault plans."""
