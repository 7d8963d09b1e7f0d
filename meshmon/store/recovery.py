"""Opening a store directory after a clean stop or a crash: find, verify and index segments.

Nothing here raises for bad content. Every problem is logged naming the file and recorded in
:class:`~meshmon.store.records.RecoveryInfo`, and every valid record is kept:

* a torn or corrupt tail (after the last valid frame) is truncated;
* a corrupt stretch inside a segment is skipped, and the records lost in it are counted from
  the gap in seqs around it;
* a segment whose header is damaged is scanned whole for frames and kept read-only;
* a file without a single valid record is renamed ``*.bad`` and left for inspection;
* a saved frame index (``.idx``) whose segment is gone, or that was half-written, is deleted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from meshmon.store import sidecar
from meshmon.store.errors import StoreLocked
from meshmon.store.health import recovery_report
from meshmon.store.index import SeriesTable
from meshmon.store.records import RecoveryInfo
from meshmon.store.segment import Segment, load_segment, parse_segment_name

if TYPE_CHECKING:
    from meshmon.store.outage import Outages

log = logging.getLogger("meshmon.store")

KNOWN = ("LOCK", "cursors", "HEALTH", "store.id")


def take_lock(directory: Path) -> int:
    """Lock the store directory for this process; return the lock's file descriptor.

    Raises:
        StoreLocked: another process holds it.
    """
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(
            f"{directory} is in use by another process (an agent already running on this "
            "data_dir?); stop it or give this agent its own data_dir"
        ) from None
    return fd


def load_directory(
    directory: Path, segment_bytes: int, series: SeriesTable, info: RecoveryInfo
) -> tuple[list[Segment], int]:
    """Load every segment file of a store directory, oldest first.

    Args:
        directory: the store directory.
        segment_bytes: the configured segment size (largest plausible frame).
        series: interns each record's (check, target).
        info: filled with what was found.

    Returns:
        The segments and the next seq to assign (above every seq seen and every segment name).
    """
    found: list[tuple[int, Path]] = []
    for path in directory.iterdir():
        first = parse_segment_name(path.name)
        if first is not None and path.is_file():
            found.append((first, path))
        elif path.suffix == sidecar.SUFFIX or path.name.endswith(".idx.tmp"):
            if not path.with_suffix(".seg").exists() or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # its segment is gone, or it was half-written
        elif path.name not in KNOWN and not path.name.endswith(".bad"):
            log.info("store %s: ignoring unexpected file %s", directory, path.name)
    found.sort()
    segments: list[Segment] = []
    prev_seq = 0
    max_first = 0
    for first, path in found:
        seg, rep = load_segment(path, first, prev_seq, segment_bytes, series)
        info.segments += 1
        info.records += rep.records
        info.skipped_records += rep.skipped_records
        info.skipped_bytes += rep.skipped_bytes
        for problem in rep.problems:
            info.problems.append(f"{path}: {problem}")
            log.warning("store segment %s: %s", path, problem)
        if not seg.header_ok and not rep.records:
            bad = path.with_name(path.name + ".bad")
            os.replace(path, bad)
            sidecar.remove(path)
            info.bad_files.append(str(bad))
            log.error("store segment %s holds no valid record; renamed to %s (inspect or delete "
                      "it; the other segments are intact)", path, bad.name)  # fmt: skip
            continue
        if seg.header_ok:
            max_first = max(max_first, first)
            if rep.tail_bytes:
                info.truncated_bytes += rep.tail_bytes
                msg = (f"torn or corrupt tail of {rep.tail_bytes} bytes after offset {seg.size} "
                       "truncated")  # fmt: skip
                info.problems.append(f"{path}: {msg}")
                log.warning("store segment %s: %s", path, msg)
                os.truncate(path, seg.size)
        if seg.count:
            prev_seq = seg.last_seq
        prev_seq = max(prev_seq, seg.seen_seq)  # seqs of records found but not kept: never reused
        segments.append(seg)
    return segments, max(prev_seq, max_first - 1) + 1


def report_opening(directory: Path, info: RecoveryInfo, outages: Outages) -> None:
    """Log how opening went; keep a report of a recovery that found damage (it survives
    restarts in the health file, for ``meshmon status``)."""
    if info.problems:
        outages.note_recovery(recovery_report(time.time(), info.truncated_bytes,
                                              info.skipped_records, info.bad_files, info.problems))
        log.warning("store %s recovered %d records in %.2fs; %d problems (see above)",
                    directory, info.records, info.seconds, len(info.problems))  # fmt: skip
    else:
        log.info("store %s opened: %d records in %d segments (%.2fs)",
                 directory, info.records, info.segments, info.seconds)  # fmt: skip
