"""``python -m meshmon`` is the ``meshmon`` command."""

from meshmon.daemon import main

main()
