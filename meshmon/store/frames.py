"""Reading stored frames as they are on disk, for an upload that ships them (sync version 3).

Theory of operation
-------------------
An upload of columns (:mod:`meshmon.store.columns`) inflates every frame it reads, and the
uploader then re-encodes and deflates the records again for the wire. :func:`read_frames`
hands over the compressed frames themselves, with what a reader needs to decode them alone
(:mod:`meshmon.wire.frames`): the preset dictionary they use and the (check, target) of the
segment-local series ids they name (every series of the segment, unless it has very many).
Nothing is inflated here but, in a segment of very many series, the frames' meta, for the ids
they name; whether every record has a summary is in each frame's header.

A run of frames is contiguous in seq, of one segment and one dictionary, every frame whole and
durable. The first frame may start before ``from_seq`` (its older records are already
delivered; the reader skips them). ``None`` when frames cannot serve and the caller reads
columns instead: a version 1 segment, a frame that does not decode (the column read counts and
logs it), a first frame of more than ``limit`` records or beyond ``upto``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshmon.store import batch
from meshmon.store.query import Reader


@dataclass
class StoredFrames:
    """Whole batch frames holding records ``first .. last`` (see the module doc)."""

    first: int
    last: int
    frames: bytes = b""
    """The frames, back to back, as on disk (header, deflated body, CRC-32)."""
    zdict: bytes = b""
    """The preset dictionary the frames use (empty: none)."""
    names: dict[int, tuple[str, str]] = field(default_factory=dict)
    """(check, target) of every segment-local series id the frames name."""
    unsummarized: int = 0
    """Records from ``first`` on in frames where some record has no summary
    (:mod:`meshmon.store.batch`)."""

    @property
    def count(self) -> int:
        """Records from ``first`` to ``last``."""
        return self.last - self.first + 1


NAMES_MAX = 4096
"""Up to this many series in the segment, a run names all of them (no frame is inflated);
beyond, only those its frames name (each frame's meta inflated to find them)."""


def read_frames(reader: Reader, from_seq: int, upto: int, limit: int,
                max_bytes: int) -> StoredFrames | None:  # fmt: skip
    """The frames from the one holding ``from_seq`` on, up to ``limit`` records (counted from
    ``from_seq``), about ``max_bytes`` of frames and seq ``upto``; ``None`` if frames cannot
    serve (see the module doc). Only the frames' headers are read (checksums verified), and
    their meta only if the segment has more than :data:`NAMES_MAX` series."""
    segments = reader.segments
    if not segments:
        return None
    seg = segments[reader.segment_for(from_seq)]
    k = seg.frame_ge(from_seq)
    if seg.version == 1 or k >= seg.frames:
        return None
    first = max(from_seq, seg.seq0(k))
    stop = k
    while (stop < seg.frames and seg.seq0(stop) + seg.fcount[stop] - 1 <= upto
           and seg.seq0(stop) + seg.fcount[stop] - first <= limit
           and (stop == k or seg.end_of(stop) - seg.fpos[k] <= max_bytes)
           and (stop == k or seg.seq0(stop) == seg.seq0(stop - 1) + seg.fcount[stop - 1])):
        stop += 1  # fmt: skip
    if stop == k:
        return None
    base = seg.fpos[k]
    data = seg.pread(base, seg.end_of(stop - 1))
    gmap = seg.gids
    every = len(gmap) <= NAMES_MAX
    parts: list[bytes] = []
    lids: set[int] = set()
    did, last, bare = -1, first - 1, 0
    for j in range(k, stop):
        head = batch.read_head(data, seg.fpos[j] - base, len(data))
        if head is None or head.kind != batch.KIND_BATCH or head.count != seg.fcount[j] \
                or did not in (-1, head.dict_id):  # fmt: skip
            break  # it does not verify, or uses another dictionary: the run ends before it
        if not every:
            meta = batch.decode_meta(data, head, seg.dicts)
            if meta is None:
                break
            lids.update(meta.sids)
        did, last = head.dict_id, head.seq0 + head.count - 1
        if not head.flags & batch.SUMMARIZED:
            bare += head.count - max(0, first - head.seq0)
        parts.append(data[head.pos : head.end])
    if not parts:
        return None
    series = reader.series.series
    names: dict[int, tuple[str, str]] = {}
    for lid in range(len(gmap)) if every else lids:
        found = series[gmap[lid]] if lid < len(gmap) else None
        if found is None:
            if not every:
                return None
            continue  # a series the ring dropped with older segments: no frame here names it
        names[lid] = found.pair
    return StoredFrames(first, last, b"".join(parts), seg.dicts.get(did, b"") if did else b"",
                        names, bare)
