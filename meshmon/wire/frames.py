"""Version 3 of the sync body: the agent's stored frames, shipped as they are on disk.

Theory of operation
-------------------
The agent's ring store already holds its records compressed, in frames with columns for time,
series and payload length and, for what the agent's ping path appends, each result's summary
(:mod:`meshmon.store.batch`). Version 2 (:mod:`meshmon.wire.columns`) has the uploader inflate
those frames, read every record into columns and deflate them again; the aggregator then
inflates them once more. Version 3 sends the frames themselves (:mod:`meshmon.store.frames`),
and the aggregator reads them into the very same columns, with the very same code the uploader
runs for version 2 (:class:`meshmon.sync.build.RecordReader`): the records' outcomes come from
the frames' summary columns, or, for a record without one, are read from the record itself.
The body is CBOR and not compressed again::

    v        3
    ...      the header every version has (agent, store, after, first, last, ...)
    zdict    bytes   the preset dictionary the frames use (empty: none)
    names    array   local id, check, target, local id, check, target...: the series the frames
                     name
    frames   bytes   whole batch frames, back to back, holding records first .. last and
                     perhaps, in the first frame, older ones (already delivered: skipped)

An uploader sends version 3 for a run of frames whose every record has a summary, else version
2, and version 2 too to an aggregator that answers that it does not speak 3.

What the aggregator checks before it inflates a frame: its checksum, kind and dictionary, and
that the frames follow one another in seq, the first holding ``first`` and the last ending at
``last``. Each frame is inflated in one go, never beyond what is left of
:data:`~meshmon.wire.ingest.MAX_BODY` for the whole body (413 beyond: the agent sends smaller
batches), and must inflate to exactly its meta and the payloads the meta says, naming only
series the body names. Then the columns are checked as a version 2 body's are
(:func:`meshmon.wire.columns.validate`). Every refusal is a
:class:`~meshmon.wire.ingest.BatchError` naming the field and, for a frame, its index and
byte offset.
"""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import cbor2

from meshmon.store import batch as framing
from meshmon.store.columns import StoredColumns
from meshmon.store.frames import StoredFrames
from meshmon.wire.columns import ColumnBatch, column_batch
from meshmon.wire.ingest import (
    MAX_BODY,
    MAX_RECORDS,
    BatchError,
    BatchHeader,
    get,
    header_fields,
    header_from,
    validate_header,
)

VERSION = 3


@dataclass(frozen=True, slots=True)
class FrameBatch(BatchHeader):
    """One upload in version 3: records ``first .. last`` of one store, as stored frames."""

    run: StoredFrames


def encode_frames(b: FrameBatch) -> tuple[bytes, None]:
    """The request body (not compressed: the frames are) and its ``Content-Encoding``."""
    names = list(chain.from_iterable((lid, *pair) for lid, pair in b.run.names.items()))
    return cbor2.dumps({"v": VERSION, **header_fields(b), "zdict": b.run.zdict,
                        "names": names, "frames": b.run.frames}), None  # fmt: skip


def decode_frames(obj: dict[str, Any]) -> ColumnBatch:
    """A version 3 body (its CBOR map, see :func:`meshmon.wire.ingest.load_body`), read into
    the columns of a version 2 batch and checked.

    Raises:
        BatchError: naming the field, frame or record at fault.
    """
    from meshmon.sync.build import RecordReader  # it builds on the wire modules

    fields = header_from(obj)
    header = BatchHeader(**fields)
    validate_header(header)
    if header.count > MAX_RECORDS:
        raise BatchError(f"last: {header.count} records from seq {header.first}, more than "
                         f"{MAX_RECORDS}")  # fmt: skip
    zdict = get(obj, "zdict", bytes)
    stored = read(get(obj, "frames", bytes), {framing.dict_id(zdict): zdict} if zdict else {},
                  _names(get(obj, "names", list)), header.first, header.last)  # fmt: skip
    return column_batch(**fields, **RecordReader(header.agent).columns(stored))


def _names(flat: list[Any]) -> dict[int, tuple[str, str]]:
    if len(flat) % 3:
        raise BatchError(f"names: {len(flat)} items, not (id, check, target) triples")
    ids, checks, targets = flat[0::3], flat[1::3], flat[2::3]
    try:
        if bool in set(map(type, ids)):
            raise TypeError
        array("I", ids)  # every id an unsigned 32-bit integer (checked in C)
    except (TypeError, OverflowError):
        i = next(i for i, x in enumerate(ids) if not (type(x) is int and 0 <= x < 2**32))
        raise BatchError(f"names[{i}].id: expected a series id (an unsigned 32-bit "
                         "integer)") from None
    try:
        clean = "\x00" not in "".join(checks) + "".join(targets)  # TypeError: not all text
    except TypeError:
        clean = False
    if not clean:
        for i, (check, target) in enumerate(zip(checks, targets, strict=True)):
            for what, value in (("check", check), ("target", target)):
                if type(value) is not str or "\x00" in value:
                    raise BatchError(f"names[{i}].{what}: expected text without NUL")
    table = dict(zip(ids, zip(checks, targets, strict=True), strict=True))
    if len(table) != len(ids):
        raise BatchError("names: a series id is named twice")
    return table


def read(frames: bytes, dicts: dict[int, bytes], names: dict[int, tuple[str, str]],
         first: int, last: int) -> StoredColumns:  # fmt: skip
    """Records ``first .. last`` of ``frames`` as columns (series by local id, named by
    ``names``).

    Raises:
        BatchError: a frame is not whole, not a batch frame, uses another dictionary, is out of
            place, does not inflate, or would inflate beyond the budget; or names an unnamed
            series.
    """
    out = StoredColumns(first)
    out.names = names
    budget = MAX_BODY
    view = memoryview(frames)
    pos, k, expect = 0, 0, -1
    while pos < len(frames):
        h = framing.read_head(frames, pos, len(frames))
        if h is None:
            raise BatchError(f"{_at(k, pos)}: not a whole frame (a bad header or checksum)")
        if h.kind != framing.KIND_BATCH or not h.count:
            raise BatchError(f"{_at(k, pos)}: not a batch frame")
        zdict = dicts.get(h.dict_id) if h.dict_id else b""
        if zdict is None:
            raise BatchError(f"{_at(k, pos)}: uses dictionary {h.dict_id:#x}, which zdict is "
                             "not")  # fmt: skip
        end = h.seq0 + h.count - 1
        if (expect < 0 and not h.seq0 <= first <= end) or (expect >= 0 and h.seq0 != expect):
            raise BatchError(f"{_at(k, pos)}: holds seqs {h.seq0}..{end}, expected a frame "
                             + (f"holding seq {first}" if expect < 0 else f"from seq {expect}"))
        inflater = zlib.decompressobj(-15, zdict=zdict) if zdict else zlib.decompressobj(-15)
        try:  # never beyond what is left of the budget, whatever a forged stream inflates to
            raw = inflater.decompress(view[h.pos + framing.HEAD_SIZE : h.end - 4], budget + 1)
        except zlib.error as exc:
            raise BatchError(f"{_at(k, pos)}: does not inflate ({exc})") from None
        if len(raw) > budget:
            raise BatchError(f"frames: inflate beyond {MAX_BODY} bytes in all; send fewer "
                             "records a batch", 413)  # fmt: skip
        budget -= len(raw)
        meta = framing.parse_meta(raw[: h.meta_len], h) if len(raw) >= h.meta_len else None
        if not meta or not inflater.eof or len(raw) != h.meta_len + sum(meta.plens):
            raise BatchError(f"{_at(k, pos)}: its meta or its lengths disagree with what it "
                             "inflates to")  # fmt: skip
        if not all(map(names.__contains__, meta.sids)):
            lid = next(x for x in meta.sids if x not in names)
            raise BatchError(f"{_at(k, pos)}: names series id {lid}, which names does not")
        a = max(0, first - h.seq0)
        out.tss.extend(meta.tss[a:])
        sids = meta.sids[a:]
        if out.gids.typecode != sids.typecode:  # ids of 2 bytes, unless a frame has wide ones
            if not out.gids:
                out.gids = array(sids.typecode)
            elif sids.typecode == "I":
                out.gids = array("I", out.gids)
            else:
                sids = array("I", sids)
        out.gids.extend(sids)
        out.plens.extend(meta.plens[a:])
        out.payloads += memoryview(raw)[h.meta_len + sum(meta.plens[:a]) :]
        if meta.words is not None and meta.rtts is not None:
            out.words.extend(meta.words[a:])
            out.rtts.extend(meta.rtts[a:])
        else:
            out.words.extend(repeat(0, h.count - a))
            out.rtts.extend(repeat(math.nan, h.count - a))
        pos, k, expect = h.end, k + 1, end + 1
    if expect - 1 != last:
        raise BatchError(f"frames: end at seq {expect - 1}, the batch says last is {last}"
                         if expect >= 0 else "frames: none")  # fmt: skip
    return out


def _at(k: int, pos: int) -> str:
    return f"frames[{k}] (byte {pos})"

