"""``python -m meshmon`` is the ``meshmon`` command."""

from meshmon.cli import main

main()
