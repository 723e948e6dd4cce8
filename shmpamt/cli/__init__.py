"""The ``shmpamt`` command line: the commands, their shared helpers, the entry point.

Kept empty: ``shmpamt --help`` imports only what a command needs."""
