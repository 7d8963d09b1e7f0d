"""Logging setup: the standard ``logging`` module, as text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, plus exc when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str = "info", fmt: Literal["text", "json"] = "text") -> None:
    """Configure the root logger for the process (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # one line per HTTP probe is noise at info level
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


class RateLimitedLog:
    """Emit at most one line per ``interval`` seconds per key; count the rest.

    Used for bad input from the network, which an attacker could otherwise use to flood logs.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object, now: float | None = None) -> None:
        """Log ``msg`` unless ``key`` was logged less than ``interval`` ago."""
        self.log(logging.WARNING, key, msg, *args, now=now)

    def log(self, level: int, key: str, msg: str, *args: object, now: float | None = None) -> None:
        """:meth:`warning` at another ``level``."""
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return
        skipped = self.suppressed.pop(key, 0)
        self._last[key] = now
        suffix = f" (+{skipped} similar suppressed)" if skipped else ""
        self.logger.log(level, msg + suffix, *args)
