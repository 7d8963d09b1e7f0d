"""``meshmon agent run`` without the CLI framework: what a long-running agent process loads.

An agent is a guest on its host. typer, and the pydantic it loads to coerce options, cost about
10 MiB of resident memory and a tenth of a second of CPU at every start, for one command line
that a process supervisor writes once. :func:`main` (the ``meshmon`` console entry point)
hands ``meshmon agent run -c FILE [--log-level L] [--log-format F]`` straight to
:func:`run_agent_command`; any other command line, including ``--help`` and anything
malformed, goes to the typer app in :mod:`meshmon.cli`, which owns usage and its messages.
The typer command ``agent run`` calls :func:`run_agent_command` too, so both paths behave the
same.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_FAILURE = 1
"""A runtime failure: the agent stopped on an unexpected error, or no agent answered."""
EXIT_USAGE = 2
"""Usage or configuration error, including an agent that cannot start as configured on this
host (address not here, port in use, data_dir unusable or in use): fix, then run again."""

_VALUED = {"-c": "config", "--config": "config", "--log-level": "log_level",
           "--log-format": "log_format"}  # fmt: skip


def parse_agent_run(argv: Sequence[str]) -> dict[str, str] | None:
    """The options of a well-formed ``agent run`` command line, or None to leave it to typer."""
    if list(argv[:2]) != ["agent", "run"]:
        return None
    found: dict[str, str] = {}
    args = list(argv[2:])
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name not in _VALUED or (not eq and not args) or _VALUED[name] in found:
            return None
        found[_VALUED[name]] = value if eq else args.pop(0)
    return found if found.get("config") else None


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run_agent_command(config: Path, log_level: str = "", log_format: str = "") -> int:
    """Check ``config`` like ``meshmon config check``, run the agent until SIGINT/SIGTERM, and
    return the exit code; every failure an operator can fix is one ``error:`` line."""
    from meshmon.configcheck import load_checked
    from meshmon.configload import ConfigError
    from meshmon.logs import setup_logging

    try:
        cfg = load_checked(config)  # the same checks as `meshmon config check`
    except ConfigError as exc:
        for error in getattr(exc, "errors", [exc]):
            _error(str(error))
        return EXIT_USAGE
    level = log_level or cfg.log.level
    fmt = log_format or cfg.log.format
    if fmt not in ("text", "json"):
        _error(f"--log-format must be text or json, not {fmt!r}")
        return EXIT_USAGE
    setup_logging(level, fmt)  # type: ignore[arg-type]
    from meshmon.runner import run_agent

    try:
        run_agent(cfg, config)
    except Exception as exc:  # trio wraps the agent's errors in ExceptionGroups
        return _agent_failed(exc)
    return EXIT_OK


def _agent_failed(exc: Exception) -> int:
    """The one line an :class:`AgentError` or :class:`PkiError` inside ``exc`` gives; anything
    else is a bug: its traceback goes to the log, then one line says so."""
    import logging

    from meshmon import pki
    from meshmon.startup import AgentError, find

    fault = find(exc, AgentError) or find(exc, pki.PkiError)
    if fault is not None:
        _error(str(fault))
        return EXIT_USAGE
    logging.getLogger("meshmon").error("the agent stopped on an unexpected error", exc_info=exc)
    leaf: BaseException = exc
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    _error(f"the agent stopped on an unexpected error ({type(leaf).__name__}: {leaf}); this is "
           "a bug: please report it with the traceback logged above")  # fmt: skip
    return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> None:
    """The ``meshmon`` command: ``agent run`` here, everything else through the typer app."""
    args = sys.argv[1:] if argv is None else list(argv)
    options = parse_agent_run(args)
    if options is None:
        from meshmon.cli import main as cli_main

        cli_main()
        return
    try:
        code = run_agent_command(Path(options["config"]), options.get("log_level", ""),
                                 options.get("log_format", ""))  # fmt: skip
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
