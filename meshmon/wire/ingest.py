"""The sync protocol between an agent and an aggregator: one CBOR batch per HTTPS request.

Theory of operation
-------------------
An agent's ring store numbers its records 1, 2, 3... and has a stable identity (``store``, a
random 128-bit hex id created with the store), so ``(agent, store, seq)`` names one record
for ever: a wiped data dir is a new store and a new stream, never a collision with the old.

The agent reads its named store cursor and POSTs ``/v1/ingest`` over the mesh's mutual TLS
(the client certificate *is* the agent: ``agent`` must equal the certificate's node name).
A batch covers the contiguous range ``first..last``; ``records`` holds every stored record in
that range in seq order. ``skipped_before`` declares the seqs in ``(after, first)`` that the
ring overwrote before they could be synced (``after`` is the last seq the agent had
acknowledged, 0 for none): the aggregator accepts a gap only when it is declared, and counts it.

The aggregator keeps one high-water mark per ``(agent, store)`` in the same transaction as the
rows. It inserts only records above the mark and answers ``Ack(high_water)``: a batch retried
after a lost acknowledgement inserts nothing twice, and two aggregators on one database
serialise on the mark's row lock. A batch that starts above ``high_water + 1`` without
declaring the gap is refused (409, ``expected`` tells the agent where to resume).

Records whose check is ``_alerts`` carry alert incident history (one CBOR map per event, see
:mod:`meshmon.alerts.service`) instead of a result; the aggregator keeps them apart.

Bodies are CBOR maps; the request may be ``Content-Encoding: deflate`` (zlib) when that pays.
Three versions share everything above and differ in how the records travel: version 1
(``v: 1``, this module) as one array per record, from which the aggregator derives the columns
it stores beside each result; version 2 (``v: 2``, :mod:`meshmon.wire.columns`) as columns,
those derived columns included; version 3 (``v: 3``, :mod:`meshmon.wire.frames`) as the
agent's stored frames, which the aggregator reads into the columns of version 2. Agents send
3, or 2 where their stored records lack summaries. An aggregator reads all three
(:func:`decode_batch`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import cbor2

if TYPE_CHECKING:
    from meshmon.wire.columns import ColumnBatch

VERSION = 1
PATH = "/v1/ingest"
CONTENT_TYPE = "application/cbor"
MAX_BODY = 32 * 2**20
"""Largest request body (decompressed) an aggregator accepts."""
MAX_RECORDS = 50_000
"""Most records in one batch."""
COMPRESS_MIN = 1024
"""Bodies smaller than this are sent as is: compressing them costs more than it saves."""

INCIDENT_CHECK = "_alerts"
"""Records of this check are alert incident history (a CBOR map per event), not results."""

_STORE_ID = re.compile(r"^[0-9a-f]{32}$")


class BatchError(ValueError):
    """A batch that breaks the protocol; the message names the field and the problem.
    ``status``: the HTTP answer, 400, or 413 for a body that is (or inflates) too large (the
    agent then sends smaller batches)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class SyncRecord:
    """One stored record as it travels: the store's seq, time, series and CBOR payload."""

    seq: int
    ts: float
    check: str
    target: str
    payload: bytes
    """The stored result, CBOR-encoded by :func:`meshmon.results.codec.encode_result`."""


@dataclass(frozen=True, slots=True)
class MemberReport:
    """A member as the reporting agent sees it (its own view, labelled as such)."""

    name: str
    state: str
    incarnation: int
    address: str
    tags: tuple[str, ...]
    version: str


@dataclass(frozen=True, slots=True)
class Batch:
    """One upload: a contiguous range of one store's records."""

    agent: str
    store: str
    after: int
    """The last seq this agent had acknowledged for this store (0 for none)."""
    first: int
    last: int
    records: tuple[SyncRecord, ...]
    skipped_before: int = 0
    """Records in ``(after, first)`` the ring overwrote before they were synced."""
    lost_total: int = 0
    """Everything the ring has overwritten unsynced on this store, for the aggregator's view."""
    sent_at: float = 0.0
    """The agent's clock when it sent the batch (the aggregator reports lag from it)."""
    members: tuple[MemberReport, ...] | None = None
    """The agent's membership view, when it has changed since its last report."""

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True, slots=True)
class Ack:
    """The aggregator's answer: every seq at or below ``high_water`` is committed."""

    high_water: int
    inserted: int


def validate(batch: Batch) -> None:
    """Check a batch's internal consistency.

    Raises:
        BatchError: naming the first problem found.
    """
    validate_header(batch)
    if len(batch.records) > MAX_RECORDS:
        raise BatchError(f"records: {len(batch.records)} records, more than {MAX_RECORDS}")
    if len(batch.records) != batch.last - batch.first + 1:
        raise BatchError(f"records: {len(batch.records)} records for the range "
                         f"{batch.first}..{batch.last}")
    for i, rec in enumerate(batch.records):
        if rec.seq != batch.first + i:
            raise BatchError(f"records[{i}].seq: {rec.seq}, expected {batch.first + i} "
                             "(records must be contiguous and in order)")


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What a batch of version 2 or 3 says besides its records (version 1's :class:`Batch`
    carries the same fields, with defaults)."""

    agent: str
    store: str
    after: int
    first: int
    last: int
    skipped_before: int
    lost_total: int
    sent_at: float
    members: tuple[MemberReport, ...] | None

    @property
    def count(self) -> int:
        """Records in the batch."""
        return self.last - self.first + 1


class Header(Protocol):
    """What every version of a batch says besides its records."""

    @property
    def agent(self) -> str: ...
    @property
    def store(self) -> str: ...
    @property
    def after(self) -> int: ...
    @property
    def first(self) -> int: ...
    @property
    def last(self) -> int: ...
    @property
    def skipped_before(self) -> int: ...


def validate_header(batch: Header) -> None:
    """Check who sends and the range of seqs (every version).

    Raises:
        BatchError: naming the first problem found.
    """
    if not batch.agent:
        raise BatchError("agent: must be the sender's node name")
    if not _STORE_ID.match(batch.store):
        raise BatchError(f"store: {batch.store!r} is not a 32-character lowercase hex id")
    if batch.after < 0:
        raise BatchError(f"after: {batch.after} is negative")
    if batch.first <= batch.after:
        raise BatchError(f"first: {batch.first} must be above after ({batch.after})")
    if batch.last < batch.first - 1:
        raise BatchError(f"last: {batch.last} is below first ({batch.first})")
    if batch.skipped_before != batch.first - batch.after - 1:
        raise BatchError(f"skipped_before: {batch.skipped_before} does not match the gap between "
                         f"after ({batch.after}) and first ({batch.first})")


def encode_batch(batch: Batch) -> tuple[bytes, str | None]:
    """The request body and its ``Content-Encoding`` (``deflate`` or ``None``)."""
    body = cbor2.dumps({
        "v": VERSION, **header_fields(batch),
        "records": [[r.seq, r.ts, r.check, r.target, r.payload] for r in batch.records],
    })  # fmt: skip
    return compress(body)


def header_fields(batch: Batch | ColumnBatch) -> dict[str, Any]:
    """The body's fields besides the version and the records (every version)."""
    return {
        "agent": batch.agent, "store": batch.store, "after": batch.after,
        "first": batch.first, "last": batch.last, "skipped_before": batch.skipped_before,
        "lost_total": batch.lost_total, "sent_at": batch.sent_at,
        "members": None if batch.members is None else [
            [m.name, m.state, m.incarnation, m.address, list(m.tags), m.version]
            for m in batch.members],
    }  # fmt: skip


def compress(body: bytes) -> tuple[bytes, str | None]:
    """``body`` deflated (zlib level 1) when that makes it at least 10 % smaller."""
    if len(body) < COMPRESS_MIN:
        return body, None
    packed = zlib.compress(body, 1)
    return (packed, "deflate") if len(packed) < len(body) * 0.9 else (body, None)


def decode_batch(data: bytes, content_encoding: str | None = None) -> Batch | ColumnBatch:
    """Parse and validate a request body of any version (version 2:
    :mod:`meshmon.wire.columns`, version 3: :mod:`meshmon.wire.frames`).

    Raises:
        BatchError: not CBOR, not deflate when it says so, too large, or the wrong schema.
    """
    obj = load_body(data, content_encoding)
    version = obj.get("v")
    if version == VERSION:
        return _batch_v1(obj)
    if version == 2:
        from meshmon.wire.columns import decode_columns  # it builds on this module

        return decode_columns(obj)
    if version == 3:
        from meshmon.wire.frames import decode_frames  # it builds on this module

        return decode_frames(obj)
    raise BatchError(f"v: protocol version {version!r}, this aggregator speaks 1, 2 and 3")


def load_body(data: bytes, content_encoding: str | None) -> dict[str, Any]:
    """The CBOR map of a request body, inflated if need be.

    Raises:
        BatchError: not CBOR, not deflate when it says so, too large, not a map.
    """
    if content_encoding in ("deflate", "zlib"):
        try:
            d = zlib.decompressobj()
            data = d.decompress(data, MAX_BODY)
            if d.unconsumed_tail:
                raise BatchError(f"body: larger than {MAX_BODY} bytes once decompressed", 413)
        except zlib.error as exc:
            raise BatchError(f"body: not valid deflate data ({exc})") from None
    elif content_encoding not in (None, "", "identity"):
        raise BatchError(f"Content-Encoding: {content_encoding!r} is not supported (use deflate)")
    if len(data) > MAX_BODY:
        raise BatchError(f"body: larger than {MAX_BODY} bytes", 413)
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for garbage
        raise BatchError(f"body: not CBOR ({exc})") from None
    if not isinstance(obj, dict):
        raise BatchError("body: expected a CBOR map")
    return obj


def _batch_v1(obj: dict[str, Any]) -> Batch:
    try:
        records = _records(get(obj, "records", list))
        return Batch(records=records, **header_from(obj))
    except BatchError:
        raise
    except (TypeError, ValueError) as exc:
        raise BatchError(f"body: {exc}") from None


def header_from(obj: dict[str, Any]) -> dict[str, Any]:
    """The fields of :func:`header_fields`, type-checked (not yet validated together).

    Raises:
        BatchError: a field is missing or of the wrong type.
    """
    members_raw = obj.get("members")
    members = None if members_raw is None else tuple(
        _member(i, m) for i, m in enumerate(typed("members", members_raw, list)))  # fmt: skip
    return {
        "agent": get(obj, "agent", str), "store": get(obj, "store", str),
        "after": get(obj, "after", int), "first": get(obj, "first", int),
        "last": get(obj, "last", int), "skipped_before": get(obj, "skipped_before", int),
        "lost_total": get(obj, "lost_total", int),
        "sent_at": float(get(obj, "sent_at", (int, float))), "members": members,
    }  # fmt: skip


def encode_ack(ack: Ack) -> bytes:
    """The response body of a successful ingest."""
    return cbor2.dumps({"high_water": ack.high_water, "inserted": ack.inserted})


def decode_ack(data: bytes) -> Ack:
    """Parse an aggregator's acknowledgement.

    Raises:
        BatchError: the answer is not an acknowledgement.
    """
    try:
        obj = cbor2.loads(data)
        return Ack(high_water=get(obj, "high_water", int), inserted=get(obj, "inserted", int))
    except BatchError:
        raise
    except Exception as exc:
        raise BatchError(f"acknowledgement: not CBOR ({exc})") from None


def typed(key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BatchError(f"{key}: expected {_kind_name(kind)}, got {type(value).__name__}")
    return value


def get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise BatchError(f"{key}: missing")
    return typed(key, obj[key], kind)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _records(raw: list[Any]) -> tuple[SyncRecord, ...]:
    """Every record; well-formed ones take a fast road (exact type checks: ``bool`` is not an
    ``int`` here), anything else goes through :func:`_record`, which names the problem."""
    out = []
    for i, item in enumerate(raw):
        if type(item) is list and len(item) == 5:
            seq, ts, check, target, payload = item
            kind = type(ts)
            if (type(seq) is int and (kind is float or kind is int) and type(check) is str
                    and type(target) is str and type(payload) is bytes):  # fmt: skip
                out.append(SyncRecord(seq, float(ts), check, target, payload))
                continue
        out.append(_record(i, item))
    return tuple(out)


def _record(i: int, raw: Any) -> SyncRecord:
    key = f"records[{i}]"
    if not isinstance(raw, list) or len(raw) != 5:
        raise BatchError(f"{key}: expected [seq, ts, check, target, payload]")
    seq, ts, check, target, payload = raw
    return SyncRecord(typed(f"{key}.seq", seq, int), float(typed(f"{key}.ts", ts, (int, float))),
                      typed(f"{key}.check", check, str), typed(f"{key}.target", target, str),
                      typed(f"{key}.payload", payload, bytes))  # fmt: skip


def _member(i: int, raw: Any) -> MemberReport:
    key = f"members[{i}]"
    if not isinstance(raw, list) or len(raw) != 6:
        raise BatchError(f"{key}: expected [name, state, incarnation, address, tags, version]")
    name, state, inc, address, tags, version = raw
    tag_list = typed(f"{key}.tags", tags, list)
    return MemberReport(typed(f"{key}.name", name, str), typed(f"{key}.state", state, str),
                        typed(f"{key}.incarnation", inc, int),
                        typed(f"{key}.address", address, str),
                        tuple(typed(f"{key}.tags", t, str) for t in tag_list),
                        typed(f"{key}.version", version, str))  # fmt: skip
