"""Reading stored frames as they are on disk, for an upload that ships them (sync version 3).

Theory of operation
-------------------
An upload of columns (:mod:`meshmon.store.columns`) inflates every frame it reads, and the
uploader then re-encodes and deflates the records again for the wire. :func:`read_frames`
hands over the compressed frames themselves, with what a reader needs to decode them alone
(:mod:`meshmon.wire.frames`): the preset dictionary they use and the (check, target) of each
segment-local series id they name. Only the ``meta`` part of each frame is inflated here, for
those ids; the payloads never are.

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
    """Records from ``first`` on without a summary (:mod:`meshmon.store.batch`)."""

    @property
    def count(self) -> int:
        """Records from ``first`` to ``last``."""
        return self.last - self.first + 1


def read_frames(reader: Reader, from_seq: int, upto: int, limit: int, max_bytes: int,
                max_raw: int) -> StoredFrames | None:  # fmt: skip
    """The frames from the one holding ``from_seq`` on, up to ``limit`` records (counted from
    ``from_seq``), about ``max_bytes`` of frames, ``max_raw`` bytes of them inflated (meta and
    payloads; at least one frame) and seq ``upto``; ``None`` if frames cannot serve (see the
    module doc)."""
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
    parts: list[bytes] = []
    lids: set[int] = set()
    did, last = -1, first - 1
    raw = bare = 0
    for j in range(k, stop):
        head = batch.read_head(data, seg.fpos[j] - base, len(data))
        if head is None or head.kind != batch.KIND_BATCH or head.count != seg.fcount[j] \
                or did not in (-1, head.dict_id):  # fmt: skip
            break  # it does not decode, or uses another dictionary: the run ends before it
        opened = batch.open_meta(data, head, seg.dicts)
        if not opened:
            break
        meta = opened[0]
        raw += head.meta_len + sum(meta.plens)
        if parts and raw > max_raw:
            break
        did, last = head.dict_id, head.seq0 + head.count - 1
        lids.update(meta.sids)
        words = meta.words[max(0, first - head.seq0) :] if meta.words is not None else ()
        bare += head.count - max(0, first - head.seq0) - len(words) + words.count(0)
        parts.append(data[head.pos : head.end])
    if not parts:
        return None
    gmap, series = seg.gids, reader.series.series
    names: dict[int, tuple[str, str]] = {}
    for lid in lids:
        found = series[gmap[lid]] if lid < len(gmap) else None
        if found is None:
            return None
        names[lid] = found.pair
    return StoredFrames(first, last, b"".join(parts), seg.dicts.get(did, b"") if did else b"",
                        names, bare)  # fmt: skip
