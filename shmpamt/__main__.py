"""``python -m shmpamt`` is the ``shmpamt`` command."""

from shmpamt.cli.entry import main

main()
