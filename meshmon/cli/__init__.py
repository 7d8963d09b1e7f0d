"""The ``meshmon`` command line: one module per command group (see :mod:`.app`)."""

from meshmon.cli.app import app, main

__all__ = ["app", "main"]
