"""Compact, versioned CBOR encoding of membership datagrams and push-pull state.

Theory of operation
-------------------
A datagram is an indefinite-length CBOR array: ``[VERSION, msg, msg, ...]``. Each message is a
short array whose first item is its type code. Messages are encoded one at a time
(:func:`encode_message`) so the broadcast queue can cache their bytes and pack as many as fit into
one datagram by plain concatenation (:func:`frame`), without re-encoding.

Decoding is strict: every field's type and range are checked, and any problem raises
:class:`MalformedMessage` and nothing else. A datagram decodes completely before the core acts
on it, so a bad message anywhere leaves the state untouched.
"""

from __future__ import annotations

import bisect
import functools
import io
import ipaddress
import itertools
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

import cbor2

from meshmon.membership.messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    NodeMeta,
    Ping,
    PushPullState,
    State,
    Suspect,
    UserData,
    UserNotice,
)
from meshmon.wire import urls

VERSION = 2
"""Wire version; a receiver rejects datagrams and states of another version (2: self-statements
carry proofs). Within it, metadata has a ninth item (aggregator URLs) only when the member
advertises some; builds before it refuse such metadata, so mix builds only without it."""

_OPEN = b"\x9f" + cbor2.dumps(VERSION)
_CLOSE = b"\xff"
FRAME_OVERHEAD = len(_OPEN) + len(_CLOSE)
"""Bytes a datagram adds around its messages."""

_PING, _INDIRECT, _ACK, _NACK, _ALIVE, _SUSPECT, _DEAD, _USER, _NOTICE = range(9)
_MAX_NAME = 63
_MAX_KEY = 64
_MAX_TAGS = 64
_MAX_INT = 2**63 - 1
_MAX_STATE_MEMBERS = 1_000_000
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
MAX_PROOF = 2048
"""Largest proof accepted (a certificate and a signature are ~610 bytes)."""
MAX_REF = 64
"""Longest certificate reference (fingerprint) a fetch may name."""
_STATEMENT = "meshmon-statement-v1"
_STATE_OPEN = {join: b"\x84" + cbor2.dumps(VERSION) + cbor2.dumps(join) for join in (False, True)}
"""A push-pull state's first bytes: an array of 4, the version, the join flag."""


class MalformedMessage(ValueError):
    """Input that is not a valid membership datagram or state; it was ignored."""


def _meta_list(meta: NodeMeta) -> list[Any]:
    items = [meta.name, meta.address, meta.udp_port, meta.tcp_port, list(meta.tags), meta.version,
             meta.cert_fingerprint, meta.config_version]
    if meta.sync_urls:  # a ninth item only when there are some: one encoding per metadata
        items.append(list(meta.sync_urls))
    return items


def encode_statement(kind: State, incarnation: int, meta: NodeMeta) -> bytes:
    """The canonical bytes a member's proof of a statement about itself covers."""
    return bytes(cbor2.dumps([_STATEMENT, kind.value, incarnation, _meta_list(meta)]))


def encode_message(msg: Message) -> bytes:
    """Encode one message (to be framed with :func:`frame`)."""
    item: list[Any]
    if isinstance(msg, Ping):
        item = [_PING, msg.seq, msg.target, msg.source]
    elif isinstance(msg, Ack):
        item = [_ACK, msg.seq]
    elif isinstance(msg, Alive):
        item = [_ALIVE, msg.incarnation, _meta_list(msg.meta), msg.proof]
    elif isinstance(msg, Suspect):
        item = [_SUSPECT, msg.incarnation, msg.node, msg.source]
    elif isinstance(msg, Dead):
        item = [_DEAD, msg.incarnation, msg.node, msg.source]
        if msg.meta is not None:
            item += [_meta_list(msg.meta), msg.proof]
    elif isinstance(msg, IndirectPing):
        item = [_INDIRECT, msg.seq, msg.target, list(msg.target_addr), msg.nack, msg.source]
    elif isinstance(msg, Nack):
        item = [_NACK, msg.seq]
    elif isinstance(msg, UserData):
        item = [_USER, msg.key, msg.version, msg.payload]
    else:
        item = [_NOTICE, msg.key, msg.version, msg.holder]
    return bytes(cbor2.dumps(item))


def encode_ping(seq: int, target: str, source: str) -> bytes:
    """``encode_message(Ping(seq, target, source))``, for the hot path (every probe)."""
    return bytes(cbor2.dumps([_PING, seq, target, source]))


def encode_ack(seq: int) -> bytes:
    """``encode_message(Ack(seq))``, for the hot path (every probe's answer)."""
    return bytes(cbor2.dumps([_ACK, seq]))


def frame(encoded: list[bytes]) -> bytes:
    """Join encoded messages into one datagram."""
    return _OPEN + b"".join(encoded) + _CLOSE


def encode_datagram(msgs: list[Message]) -> bytes:
    """Encode and frame messages (convenience for tests and one-off sends)."""
    return frame([encode_message(m) for m in msgs])


# -- decoding ------------------------------------------------------------------------------------


def _int(value: Any, lo: int = 0, hi: int = _MAX_INT) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise MalformedMessage(f"expected an integer in {lo}..{hi}, got {value!r:.40}")
    return value


def _str(value: Any, max_len: int = _MAX_NAME, allow_empty: bool = False) -> str:
    if type(value) is not str or len(value) > max_len or (not value and not allow_empty):
        raise MalformedMessage(f"expected a string of 1..{max_len} characters, got {value!r:.40}")
    return value


_NAMES: set[str] = set()  # names seen valid (every ping, suspect and dead names two)
_NAMES_MAX = 65536


def _name(value: Any) -> str:
    if type(value) is str and value in _NAMES:
        return value
    if type(value) is not str or not _NAME_RE.fullmatch(value):
        raise MalformedMessage(f"expected a node name (1-63 of A-Za-z0-9-_.), got {value!r:.40}")
    if len(_NAMES) >= _NAMES_MAX:
        _NAMES.clear()
    _NAMES.add(value)
    return value


def _list(value: Any, length: int | None = None) -> list[Any]:
    if type(value) is not list or (length is not None and len(value) != length):
        raise MalformedMessage(f"expected an array of {length} items, got {value!r:.40}")
    return value


@functools.lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ip(value: Any) -> str:
    if type(value) is not str or len(value) > 45 or not _is_ip(value):
        raise MalformedMessage(f"{value!r:.50} is not an IP address")
    return value


def _addr(value: Any) -> Addr:
    items = _list(value, 2)
    return (_ip(items[0]), _int(items[1], 0, 65535))


_META_CACHE: dict[tuple[Any, ...], NodeMeta] = {}
_META_CACHE_MAX = 65536


def _sync_urls(value: Any) -> tuple[str, ...]:
    items = _list(value)
    if not 0 < len(items) <= urls.MAX_GOSSIP_URLS:
        raise MalformedMessage(f"sync URLs: 1-{urls.MAX_GOSSIP_URLS} expected when present")
    for item in items:
        problem = urls.url_problem(item, urls.MAX_GOSSIP_URL) if type(item) is str else "not text"
        if problem:
            raise MalformedMessage(f"sync URL {item!r:.50}: {problem:.80}")
    return tuple(items)


def _meta(value: Any) -> NodeMeta:
    items = _list(value)
    if len(items) not in (8, 9):
        raise MalformedMessage(f"expected metadata of 8 or 9 items, got {value!r:.40}")
    # The same metadata arrives over and over (every Alive, every push-pull): remember the
    # validated result, keyed on the raw items. Only exact types may hit the cache, since
    # True == 1 and 1.0 == 1 in Python but not on our wire.
    tags = items[4]
    extra = items[8] if len(items) == 9 else []
    key: tuple[Any, ...] | None = None
    if (type(tags) is list and type(items[2]) is int and type(items[3]) is int
            and type(items[7]) is int and type(items[6]) is bytes
            and all(type(t) is str for t in tags) and type(extra) is list
            and all(type(u) is str for u in extra)):
        key = (items[0], items[1], items[2], items[3], tuple(tags), items[5], items[6], items[7],
               len(items), tuple(extra))
        try:
            hit = _META_CACHE.get(key)
        except TypeError:  # an unhashable name/address/version: it will fail validation below
            key, hit = None, None
        if hit is not None:
            return hit
    tags = _list(tags)
    if len(tags) > _MAX_TAGS:
        raise MalformedMessage("too many tags")
    fingerprint = items[6]
    if type(fingerprint) is not bytes or len(fingerprint) > 64:
        raise MalformedMessage("certificate fingerprint must be at most 64 bytes")
    meta = NodeMeta(
        name=_name(items[0]),
        address=_ip(items[1]),
        udp_port=_int(items[2], 0, 65535),
        tcp_port=_int(items[3], 0, 65535),
        tags=tuple(_str(t) for t in tags),
        version=_str(items[5], 64, allow_empty=True),
        cert_fingerprint=fingerprint,
        config_version=_int(items[7]),
        sync_urls=_sync_urls(items[8]) if len(items) == 9 else (),
    )
    if key is not None:
        if len(_META_CACHE) >= _META_CACHE_MAX:
            _META_CACHE.clear()
        _META_CACHE[key] = meta
    return meta


def _bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise MalformedMessage("expected a byte string")
    return value


def _proof(value: Any) -> bytes:
    if type(value) is not bytes or len(value) > MAX_PROOF:
        raise MalformedMessage(f"a proof is a byte string of at most {MAX_PROOF} bytes")
    return value


_NEWS: dict[tuple[Any, int, str, str], Suspect | Dead] = {}
"""Suspect and dead news decoded before, by their items: every member hears each piece of news
from several others (``retransmit_mult * log10 N`` sends of it per member that has it)."""
_NEWS_MAX = 65536


def _message(item: Any) -> Message:
    if type(item) is not list or not item:
        raise MalformedMessage(f"expected a message (a non-empty array), got {item!r:.40}")
    items: list[Any] = item
    kind = items[0]
    n = len(items)
    if n == 4 and kind in (_SUSPECT, _DEAD):
        inc, node, source = items[1], items[2], items[3]
        key = None
        if type(inc) is int and type(node) is str and type(source) is str:  # exact types only
            key = (kind, inc, node, source)
            news = _NEWS.get(key)
            if news is not None:
                return news
        cls = Suspect if kind == _SUSPECT else Dead
        news = cls(_int(inc), _name(node), _name(source))
        if key is not None:
            if len(_NEWS) >= _NEWS_MAX:
                _NEWS.clear()
            _NEWS[key] = news
        return news
    if kind == _PING and n == 4:
        return Ping(_int(items[1]), _name(items[2]), _name(items[3]))
    if kind == _ACK and n == 2:
        return Ack(_int(items[1]))
    if kind == _ALIVE and n == 4:
        return Alive(_int(items[1]), _meta(items[2]), _proof(items[3]))
    if kind == _DEAD and n == 6:
        return Dead(_int(items[1]), _name(items[2]), _name(items[3]), _meta(items[4]),
                    _proof(items[5]))
    if kind == _INDIRECT and n == 6:
        if type(items[4]) is not bool:
            raise MalformedMessage("nack flag must be a boolean")
        return IndirectPing(_int(items[1]), _name(items[2]), _addr(items[3]), items[4],
                            _name(items[5]))
    if kind == _NACK and n == 2:
        return Nack(_int(items[1]))
    if kind == _USER and n == 4:
        return UserData(_str(items[1], _MAX_KEY), _int(items[2]), _bytes(items[3]))
    if kind == _NOTICE and n == 4:
        return UserNotice(_str(items[1], _MAX_KEY), _int(items[2]), _name(items[3]))
    raise MalformedMessage(f"unknown message type {kind!r:.20} with {n} fields")


def _loads(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("input is not bytes")
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many types on hostile input; all mean "malformed"
        raise MalformedMessage(f"not valid CBOR: {exc}") from None


def decode_datagram(data: bytes) -> list[Message]:
    """Decode a datagram into its messages.

    Raises:
        MalformedMessage: the datagram is not a well-formed version-1 membership datagram.
    """
    top = _loads(data)
    if type(top) is not list or len(top) < 2:
        raise MalformedMessage("a datagram is an array of a version and at least one message")
    if top[0] != VERSION or type(top[0]) is not int:
        raise MalformedMessage(f"unsupported wire version {top[0]!r:.20}; upgrade this agent")
    try:
        return list(map(_message, itertools.islice(top, 1, None)))
    except MalformedMessage:
        raise
    except Exception as exc:  # e.g. RecursionError, TypeError from unhashable junk
        raise MalformedMessage(f"bad message: {type(exc).__name__}") from None


def encode_blobs(blobs: list[bytes]) -> bytes:
    """Encode a list of byte strings (certificate fetches: fingerprints asked, DERs answered)."""
    return bytes(cbor2.dumps([VERSION, blobs]))


def decode_blobs(data: bytes, max_items: int, max_len: int) -> list[bytes]:
    """Decode :func:`encode_blobs` output, refusing more than ``max_items`` or longer items.

    Raises:
        MalformedMessage: anything else.
    """
    top = _loads(data)
    if type(top) is not list or len(top) != 2 or type(top[0]) is not int or top[0] != VERSION:
        raise MalformedMessage("expected [version, [byte strings]]")
    items = _list(top[1])
    if len(items) > max_items:
        raise MalformedMessage(f"more than {max_items} items")
    for item in items:
        if type(item) is not bytes or not 0 < len(item) <= max_len:
            raise MalformedMessage(f"an item is not a byte string of 1..{max_len} bytes")
    return items


def encode_member_state(m: MemberState) -> bytes:
    """Encode one member's entry of a push-pull state (:func:`encode_state_entries` joins them)."""
    return bytes(cbor2.dumps([m.state.value, m.incarnation, _meta_list(m.meta), m.proof]))


def _array_head(n: int) -> bytes:
    """The canonical CBOR head of an array of ``n`` items (as ``cbor2.dumps`` writes it)."""
    if n < 24:
        return bytes((0x80 | n,))
    for code, size in ((0x98, 1), (0x99, 2), (0x9A, 4), (0x9B, 8)):
        if n < 1 << (8 * size):
            return bytes((code,)) + n.to_bytes(size, "big")
    raise ValueError("too many items")


def encode_state_entries(join: bool, entries: Iterable[bytes | memoryview], count: int,
                         user: tuple[UserData, ...]) -> bytes:
    """A push-pull state from ``count`` members' entries already encoded
    (:func:`encode_member_state`): byte for byte what :func:`encode_state` writes."""
    head = _STATE_OPEN[join] + _array_head(count)
    tail = bytes(cbor2.dumps([[u.key, u.version, u.payload] for u in user]))
    return b"".join(itertools.chain((head,), entries, (tail,)))


def encode_state(state: PushPullState) -> bytes:
    """Encode a push-pull state."""
    return encode_state_entries(state.join, map(encode_member_state, state.members),
                                len(state.members), state.user)


def decode_state(data: bytes) -> PushPullState:
    """Decode a push-pull state.

    Raises:
        MalformedMessage: the input is not a well-formed version-1 state.
    """
    top = _loads(data)
    try:
        items = _list(top, 4)
        if type(items[0]) is not int or items[0] != VERSION:
            raise MalformedMessage(f"unsupported state version {items[0]!r:.20}")
        if type(items[1]) is not bool:
            raise MalformedMessage("join flag must be a boolean")
        raw_members = _list(items[2])
        if len(raw_members) > _MAX_STATE_MEMBERS:
            raise MalformedMessage("too many members")
        members = [_member_state(raw) for raw in raw_members]
        return PushPullState(items[1], tuple(members), _user_data(items[3]))
    except MalformedMessage:
        raise
    except Exception as exc:
        raise MalformedMessage(f"bad state: {type(exc).__name__}") from None


def _member_state(raw: Any) -> MemberState:
    entry = _list(raw, 4)
    return MemberState(_meta(entry[2]), _int(entry[1]), State(_int(entry[0], 0, 3)),
                       _proof(entry[3]))


def _user_data(raw: Any) -> tuple[UserData, ...]:
    user = []
    for item in _list(raw):
        entry = _list(item, 3)
        user.append(UserData(_str(entry[0], _MAX_KEY), _int(entry[1]), _bytes(entry[2])))
    return tuple(user)


def decode_state_changes(data: bytes, ours: bytes | memoryview, offsets: Sequence[int],
                         names: Sequence[str], unmatched: Collection[int],
                         position: Callable[[str], int | None]) -> PushPullState | None:
    """Decode a push-pull state, leaving out the member entries that equal the receiver's own.

    ``ours`` is the receiver's entries (:func:`encode_member_state`) one after another in the
    order its own state lists them, entry ``k`` at ``ours[offsets[k]:offsets[k + 1]]`` for
    member ``names[k]``; ``position(name)`` is the ``k`` of a name (None: the receiver has no
    entry for it). A remote entry byte for byte equal to the receiver's is left out, unless
    its position is in ``unmatched`` or an entry returned before named the same member.
    Entries are compared in step with the receiver's, runs of them at once, so merging the
    state of a peer that agrees costs a few comparisons rather than a decode per member; a
    differing entry is decoded and the comparison goes on after the receiver's entry for its
    name.

    Returns None when ``data`` is not laid out as :func:`encode_state` writes it, malformed
    ones included: :func:`decode_state` must then decide (and raise). Every entry returned was
    validated as :func:`decode_state` validates it, in the order the state lists them.
    """
    if type(data) is not bytes or len(data) < 4 or data[:3] not in _STATE_OPEN.values():
        return None
    code = data[3]
    size = {0x98: 1, 0x99: 2, 0x9A: 4}.get(code, 0)
    count = code - 0x80 if code < 0x98 else int.from_bytes(data[4:4 + size], "big")
    if (not size and not 0 <= count < 24) or count > _MAX_STATE_MEMBERS or len(data) < 4 + size:
        return None
    pos = 4 + size
    n = len(names)
    joined = memoryview(ours)
    blocked = sorted(unmatched)
    blocked.append(n)
    fp = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(fp)
    startswith = data.startswith
    changed: list[MemberState] = []
    seen: set[str] = set()
    k, left, run = 0, count, 1
    in_step = True  # k never went back: no name returned so far is at or after k in ours
    try:
        while left:
            if in_step and k < n:
                end = min(k + run, blocked[bisect.bisect_left(blocked, k)], k + left)
                if end > k:
                    if startswith(joined[offsets[k]:offsets[end]], pos):
                        pos += offsets[end] - offsets[k]
                        left -= end - k
                        k = end
                        run *= 2
                        continue
                    if end - k > 1:
                        run = (end - k) // 2
                        continue
            elif k < n and k not in unmatched:
                mine = joined[offsets[k]:offsets[k + 1]]
                if names[k] not in seen and startswith(mine, pos):
                    pos += len(mine)
                    left -= 1
                    k += 1
                    continue
            fp.seek(pos)
            ms = _member_state(decoder.decode())
            pos = fp.tell()
            changed.append(ms)
            seen.add(ms.meta.name)
            at = position(ms.meta.name)
            if at is not None:
                in_step = in_step and at + 1 >= k
                k = at + 1
            left -= 1
            run = 1
        fp.seek(pos)
        user = _user_data(decoder.decode())
    except Exception:  # malformed, or laid out otherwise: decode_state decides
        return None
    return PushPullState(data[2] == 0xF5, tuple(changed), user)
