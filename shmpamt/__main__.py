"""``python -m shmpamt`` is the ``shmpamt`` command."""

from shmpamt.cli import main

main()
