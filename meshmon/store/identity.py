"""A store's identity: a random 128-bit id created with the store, kept in ``store.id``.

Seqs are unique only within one store, so anything that keeps records beyond the store (the
aggregator) names a record by ``(agent, store id, seq)``. The id is made when the store is
created and never changes while the directory lives: a wiped data dir gets a new id and starts
a new stream whose seqs cannot collide with the old one's.

The file holds 32 lowercase hex digits and a newline, written atomically and durably (write,
fsync, rename, fsync the directory), so after a crash it is either absent or whole. A store
made before ids existed gets one when it is next opened. A damaged file (not 32 hex digits)
is renamed ``store.id.bad`` and replaced by a new id, logged as an error: the records already
uploaded under the old id may then be uploaded again under the new one (kept apart, never
mixed with the old stream), which is better than refusing to run.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

from meshmon.store.cursors import fsync_dir

log = logging.getLogger("meshmon.store")

FILE = "store.id"
_ID = re.compile(r"^[0-9a-f]{32}$")


def new_id() -> str:
    """A fresh store id: 128 random bits as 32 lowercase hex digits."""
    return secrets.token_hex(16)


def _write(directory: Path, store_id: str) -> None:
    path = directory / FILE
    tmp = directory / (FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (store_id + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def load_or_create(directory: Path) -> str:
    """The store's id, creating (or replacing a damaged) ``store.id`` as needed.

    Raises:
        OSError: the file cannot be read or written.
    """
    path = directory / FILE
    (directory / (FILE + ".tmp")).unlink(missing_ok=True)  # an interrupted creation
    try:
        text = path.read_bytes().decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        store_id = new_id()
        _write(directory, store_id)
        older = any(directory.glob("*.seg"))
        log.info("store %s: %s, id %s", directory,
                 "made before stores had ids; it gets one" if older else "new store", store_id)
        return store_id
    if _ID.match(text):
        return text
    store_id = new_id()
    os.replace(path, directory / (FILE + ".bad"))
    _write(directory, store_id)
    log.error("store %s: %s is damaged (%r), kept as %s.bad; the store is now %s, a new stream "
              "for the aggregator (records already uploaded may arrive again under the new id)",
              directory, FILE, text[:40], FILE, store_id)  # fmt: skip
    return store_id
