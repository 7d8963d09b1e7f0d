"""The store's health file: loss counters and reports that must survive restarts.

It holds what no segment can: results lost because the disk refused them (they never got a
seq), the last disk outage and the last recovery that found damage. A full disk is the very
moment these must be written, so the file is allocated once, when space is there, and only
ever overwritten in place: two fixed slots, written alternately, each with a generation number
and a CRC. A torn write spoils one slot at most, and the other still holds the previous state.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any
from zlib import crc32

log = logging.getLogger("meshmon.store")

NAME = "HEALTH"
SLOT = 8192
"""Bytes per slot: room for the counters and a recovery report cut to ``MAX_PROBLEMS`` lines."""
HEAD = struct.Struct("<4sQII")  # magic, generation, body length, crc32 of generation + body
MAGIC = b"MMHF"
MAX_PROBLEMS = 10
"""Recovery problem lines kept in the file (the log has them all)."""


def _crc(gen: int, body: bytes) -> int:
    return crc32(body, crc32(gen.to_bytes(8, "little")))


def _slot(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    if len(raw) < HEAD.size:
        return None
    magic, gen, length, crc = HEAD.unpack_from(raw)
    body = raw[HEAD.size : HEAD.size + length]
    if magic != MAGIC or len(body) != length or _crc(gen, body) != crc:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return (gen, data) if isinstance(data, dict) else None


class HealthFile:
    """Two-slot, overwrite-in-place JSON state (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(self._fd, 0, 2 * SLOT)
        except OSError as exc:  # a full disk at start: saving may fail until space returns
            log.warning("store health file %s cannot be allocated (%s); loss counters are "
                        "persisted once space returns", self.path, exc)  # fmt: skip
        raw = [os.pread(self._fd, SLOT, i * SLOT) for i in (0, 1)]
        slots = [_slot(r) for r in raw]
        best = max((s for s in slots if s is not None), key=lambda s: s[0], default=None)
        self.generation, self.data = best if best is not None else (0, {})
        if best is None and any(r.strip(b"\0") for r in raw):
            log.error("store health file %s is damaged: the counts of results lost to disk "
                      "failures restart from 0 (the segments are not affected)", self.path)

    def save(self, data: dict[str, Any]) -> bool:
        """Persist ``data`` (durable on ``True``); ``False`` if the disk refused it."""
        body = json.dumps(data, default=str).encode()
        if HEAD.size + len(body) > SLOT:
            raise ValueError(f"health state of {len(body)} bytes does not fit a slot")
        gen = self.generation + 1
        try:
            os.pwrite(self._fd, HEAD.pack(MAGIC, gen, len(body), _crc(gen, body)) + body,
                      (gen % 2) * SLOT)  # fmt: skip
            os.fdatasync(self._fd)
        except OSError as exc:
            log.debug("store health file %s not saved: %s", self.path, exc)
            return False
        self.generation, self.data = gen, data
        return True

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)


def recovery_report(
    when: float,
    truncated_bytes: int,
    skipped_records: int,
    bad_files: list[str],
    problems: list[str],
) -> dict[str, Any]:
    """The part of a recovery worth keeping after the log has rotated away."""
    return {"at": when, "truncated_bytes": truncated_bytes, "skipped_records": skipped_records,
            "bad_files": [b[-200:] for b in bad_files[:MAX_PROBLEMS]], "problems": len(problems),
            "first_problems": [p[:200] for p in problems[:MAX_PROBLEMS]]}  # fmt: skip
