"""Length-prefixed CBOR frames for request/response over mTLS streams.

Theory of operation
-------------------
One request per stream: the client sends one request frame, the server answers with one
response frame and both close. A frame is a 4-byte big-endian length followed by that many bytes
of CBOR. A request is ``{"v": 1, "kind": str, "body": bytes}``; a response is
``{"ok": True, "body": bytes}`` or ``{"ok": False, "error": str}``. Frames larger than the
receiver's limit are refused before reading them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2
import trio

FRAME_VERSION = 1
"""The request schema version."""
MAX_FRAME = 16 * 1024 * 1024
"""Default frame limit: a push-pull of 10,000 members (~150 bytes each) fits ten times over."""
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """The peer broke the framing protocol (bad length, bad CBOR, wrong fields, early close)."""


class FrameTooLarge(FrameError):
    """A frame's length exceeds the receiver's limit (refused before reading it)."""


@dataclass(frozen=True)
class Request:
    """One request frame."""

    kind: str
    body: bytes


@dataclass(frozen=True)
class Response:
    """One response frame: ``body`` if ``ok``, else ``error`` says what went wrong remotely."""

    ok: bool
    body: bytes = b""
    error: str = ""


def encode(obj: dict[str, Any]) -> bytes:
    """One frame: length prefix and CBOR."""
    data = cbor2.dumps(obj)
    return _LEN.pack(len(data)) + data


def encode_request(req: Request) -> bytes:
    """Frame a request."""
    return encode({"v": FRAME_VERSION, "kind": req.kind, "body": req.body})


def encode_response(resp: Response) -> bytes:
    """Frame a response."""
    if resp.ok:
        return encode({"ok": True, "body": resp.body})
    return encode({"ok": False, "error": resp.error})


def _decode(data: bytes) -> dict[str, Any]:
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise FrameError(f"frame is not valid CBOR ({exc})") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a CBOR map")
    return obj


def decode_request(data: bytes) -> Request:
    """Parse a request frame body.

    Raises:
        FrameError: wrong version or fields.
    """
    obj = _decode(data)
    kind, body = obj.get("kind"), obj.get("body")
    if obj.get("v") != FRAME_VERSION:
        raise FrameError(f"unsupported request version {obj.get('v')!r}; upgrade meshmon")
    if not isinstance(kind, str) or not isinstance(body, bytes):
        raise FrameError("request needs a text 'kind' and a bytes 'body'")
    return Request(kind, body)


def decode_response(data: bytes) -> Response:
    """Parse a response frame body.

    Raises:
        FrameError: wrong fields.
    """
    obj = _decode(data)
    if obj.get("ok") is True and isinstance(obj.get("body"), bytes):
        return Response(True, obj["body"])
    if obj.get("ok") is False and isinstance(obj.get("error"), str):
        return Response(False, error=obj["error"])
    raise FrameError("response needs ok=true with bytes 'body' or ok=false with text 'error'")


async def _read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(n - len(buf), 65536))
        if not chunk:
            raise FrameError(f"stream closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: trio.abc.ReceiveStream, limit: int = MAX_FRAME) -> bytes:
    """Read one frame's CBOR bytes.

    Raises:
        FrameTooLarge: the length exceeds ``limit``.
        FrameError: the stream ended early.
    """
    (size,) = _LEN.unpack(await _read_exactly(stream, _LEN.size))
    if size > limit:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the {limit}-byte limit")
    return await _read_exactly(stream, size)
