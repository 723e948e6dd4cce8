"""``python -m shmpamt`` is the ``shmpamt`` command."""

from shmpamt.entry import main

main()
