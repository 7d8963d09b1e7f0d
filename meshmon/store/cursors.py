"""Named read positions over the ring, persisted crash-safely (write, fsync, rename, fsync dir).

A cursor's ``position`` is the next seq it will read; ``lost`` counts records the ring
overwrote before the cursor passed them. Both survive restarts: a cursor file is replaced
atomically, so after a crash it holds either the old or the new state, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshmon.config import check_name
from meshmon.store.errors import UnknownCursor

log = logging.getLogger("meshmon.store")

SUFFIX = ".cursor"


@dataclass
class CursorState:
    """One cursor: where it is and what it has lost."""

    name: str
    position: int
    """Next seq to read."""
    lost: int = 0
    """Records overwritten by the ring before this cursor read and committed them."""
    dirty: bool = False
    """Changed in memory since it was last written."""


def validate_name(name: str) -> None:
    """Reject cursor names that cannot be file names.

    Raises:
        ValueError: with the allowed characters.
    """
    check_name(name, "cursor name")


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_cursor(directory: Path, state: CursorState) -> None:
    """Write a cursor file atomically and durably.

    Raises:
        OSError: the disk refused the write.
    """
    path = directory / f"{state.name}{SUFFIX}"
    tmp = path.with_suffix(".tmp")
    data = json.dumps({"version": 1, "name": state.name, "position": state.position,
                       "lost": state.lost}).encode()  # fmt: skip
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)
    state.dirty = False


def load_cursors(directory: Path) -> dict[str, CursorState]:
    """Read every cursor file; a damaged one is logged and its cursor restarts from the oldest
    record (re-delivering is safe, since consumers deduplicate by seq; skipping is not)."""
    found: dict[str, CursorState] = {}
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        name = path.name.removesuffix(SUFFIX)
        try:
            data = json.loads(path.read_bytes())
            position, lost = int(data["position"]), int(data["lost"])
            if data.get("name") != name or position < 0 or lost < 0:
                raise ValueError("fields do not match the file")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("cursor file %s is damaged (%s); cursor %r restarts from the oldest record",
                      path, exc, name)  # fmt: skip
            found[name] = CursorState(name, 0, 0, dirty=True)
            continue
        found[name] = CursorState(name, position, lost)
    for tmp in directory.glob("*.tmp"):  # an interrupted save; the old file is still there
        tmp.unlink(missing_ok=True)
    return found


def delete_cursor_file(directory: Path, name: str) -> None:
    """Remove a cursor file (no error if it is absent)."""
    (directory / f"{name}{SUFFIX}").unlink(missing_ok=True)
    fsync_dir(directory)


class CursorBook:
    """The cursors of one store: their states, persistence and loss accounting."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.states = load_cursors(directory)
        self._refused_at = -60.0

    def get(self, name: str) -> CursorState:
        """A cursor's state.

        Raises:
            UnknownCursor: no such cursor.
        """
        state = self.states.get(name)
        if state is None:
            raise UnknownCursor(f"no cursor named {name!r}; create it with cursor({name!r})")
        return state

    def create(self, name: str, position: int) -> CursorState:
        """Create and persist a cursor, or return the existing one.

        Raises:
            ValueError: bad name.
        """
        validate_name(name)
        state = self.states.get(name)
        if state is None:
            state = CursorState(name, position)
            save_cursor(self.directory, state)
            self.states[name] = state
        return state

    def commit(self, name: str, last_seq: int, durable_seq: int,
               delivered_from: int | None = None,
               rewind_to: int | None = None) -> CursorState | None:  # fmt: skip
        """Move cursor ``name`` past ``last_seq``; return a snapshot to save, or ``None`` if
        nothing changed.

        A cursor never goes back, unless ``rewind_to`` (the oldest stored seq) is given: then
        it may, down to that seq, for a consumer whose downstream is authoritative about what
        it holds (the aggregator's high-water mark). Its loss counter stays as it is.

        ``delivered_from`` is the first seq of the contiguous range ``delivered_from..last_seq``
        the consumer read and delivered. If the ring dropped part of that range while it was in
        flight, those records were charged as lost although they were delivered: they are
        credited back (every record below the cursor's moved position that a drop charged was
        at or above its old position, which was at most ``delivered_from``).

        Raises:
            UnknownCursor: no such cursor.
            ValueError: ``last_seq`` is beyond the newest durable record.
        """
        state = self.get(name)
        if last_seq > durable_seq:
            raise ValueError(f"cannot commit cursor {name!r} to seq {last_seq}: the newest "
                             f"durable record is {durable_seq}")  # fmt: skip
        if delivered_from is not None and state.position > delivered_from:
            credit = min(last_seq, state.position - 1) - delivered_from + 1
            if credit > 0 and state.lost:
                state.lost = max(0, state.lost - credit)
                state.dirty = True
        position = last_seq + 1
        if rewind_to is not None:
            position = max(position, rewind_to)
        if position > state.position or (rewind_to is not None and position < state.position):
            state.position = position
            state.dirty = True
        if not state.dirty:
            return None
        return CursorState(name, state.position, state.lost)

    def delete(self, name: str) -> None:
        """Forget a cursor and its file."""
        self.states.pop(name, None)
        delete_cursor_file(self.directory, name)

    def charge_drop(self, last_seq: int, unread: Callable[[int], int]) -> None:
        """The ring dropped records up to ``last_seq``: charge each cursor still before them.

        Args:
            last_seq: newest seq dropped.
            unread: records dropped at or after a given position.
        """
        for c in self.states.values():
            if c.position <= last_seq:
                lost = unread(c.position)
                if lost:
                    c.lost += lost
                    log.warning("store ring wrapped: cursor %r lost %d records it had not read "
                                "(seqs up to %d); total lost %d", c.name, lost, last_seq,
                                c.lost)  # fmt: skip
                c.position = last_seq + 1
                c.dirty = True

    def reconcile(self, oldest: int) -> None:
        """After opening: charge cursors left behind by drops whose charge a crash lost."""
        for c in self.states.values():
            if c.position < oldest:
                lost = oldest - c.position
                if c.position > 0:  # 0: a damaged file, restarting without loss
                    c.lost += lost
                    log.warning("store cursor %r was at seq %d but the oldest record is %d: "
                                "%d records were overwritten before it read them",
                                c.name, c.position, oldest, lost)  # fmt: skip
                c.position = oldest
                c.dirty = True

    def save(self, states: list[CursorState]) -> None:
        """Write cursor snapshots (from :meth:`take_dirty`). One the disk refuses (full,
        read-only) is marked dirty again and retried at the next sync; that is logged at most
        once a minute. The caller holds the store's cursor-I/O lock."""
        for state in states:
            try:
                save_cursor(self.directory, state)
            except OSError as exc:
                live = self.states.get(state.name)
                if live is not None:
                    live.dirty = True
                now = time.monotonic()
                if now - self._refused_at >= 60.0:
                    self._refused_at = now
                    log.warning("cursor %r not saved (%s); its last saved position and loss "
                                "count stand, retrying at each sync", state.name, exc)  # fmt: skip

    def take_dirty(self) -> list[CursorState]:
        """Snapshots of cursors changed since last saved; marks them clean."""
        dirty = [CursorState(c.name, c.position, c.lost) for c in self.states.values() if c.dirty]
        for c in self.states.values():
            c.dirty = False
        return dirty
