"""The questions and the ``mm-query`` request/answer bodies (CBOR). Pure functions.

A request is ``{"v": 1, "q": kind, "a": {arguments}, "max": max_bytes}``; an answer is
``{"v": 1, "data": {...}}`` (the per-agent shapes of :mod:`meshmon.query`) or
``{"v": 1, "refused": reason}`` when the asker may not ask, or ``{"v": 1, "error": text}``
for a question the agent cannot read. Decoding checks every field and
raises :class:`QueryFormatError`, and only that, for anything malformed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cbor2

VERSION = 1
KIND = "mm-query"
"""The transport request kind of mesh queries."""

MIN_ANSWER_BYTES = 1024
"""Smallest answer limit: an answer's envelope and a few items always fit."""
MAX_ANSWER_BYTES = 16 * 2**20
"""Largest answer limit (the transport's frame limit)."""
MAX_POINTS = 2000
"""Most history points an agent returns."""
MAX_WINDOW = 7 * 86400.0
"""Longest matrix window (a week): the store rarely holds more."""
MAX_NAME = 256
"""Longest check, target or tag name accepted in a question."""


class QueryFormatError(ValueError):
    """A query request or answer is malformed; the message says which field."""


@dataclass(frozen=True)
class Latest:
    """The newest result per (check, target), optionally filtered."""

    KIND: ClassVar[str] = "latest"
    check: str | None = None
    target: str | None = None
    full: bool = False
    """Add each whole result (``meshmon.results.to_dict``) to its row."""


@dataclass(frozen=True)
class Matrix:
    """Recent statistics toward each member carrying ``tag``."""

    KIND: ClassVar[str] = "matrix"
    tag: str
    check: str | None = None
    window: float = 300.0
    """Seconds back from now."""


@dataclass(frozen=True)
class History:
    """One series over a time range, at most ``points`` points per agent."""

    KIND: ClassVar[str] = "history"
    check: str
    target: str
    since: float
    """Epoch seconds."""
    until: float | None = None
    """Epoch seconds; None is now."""
    points: int = 200


Question = Latest | Matrix | History


def encode_request(question: Question, max_bytes: int) -> bytes:
    """The body of an ``mm-query`` request."""
    if isinstance(question, Latest):
        args: dict[str, Any] = {"check": question.check, "target": question.target,
                                "full": question.full}  # fmt: skip
    elif isinstance(question, Matrix):
        args = {"tag": question.tag, "check": question.check, "window": question.window}
    else:
        args = {"check": question.check, "target": question.target, "since": question.since,
                "until": question.until, "points": question.points}  # fmt: skip
    return cbor2.dumps({"v": VERSION, "q": question.KIND, "a": args, "max": max_bytes})


def _loads(body: bytes, what: str) -> dict[Any, Any]:
    try:
        obj = cbor2.loads(body)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise QueryFormatError(f"{what} is not valid CBOR ({exc})") from None
    if not isinstance(obj, dict):
        raise QueryFormatError(f"{what} is not a CBOR map")
    if obj.get("v") != VERSION:
        raise QueryFormatError(f"{what} has version {obj.get('v')!r}, expected {VERSION}")
    return obj


def _name(args: dict[Any, Any], key: str, required: bool = False) -> str | None:
    value = args.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise QueryFormatError(f"{key!r} must be a name of 1..{MAX_NAME} characters")
    return value


def _time(args: dict[Any, Any], key: str, required: bool = False) -> float | None:
    value = args.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise QueryFormatError(f"{key!r} must be a finite number of seconds")
    return float(value)


def decode_request(body: bytes) -> tuple[Question, int]:
    """Parse a request body into the question and the answer limit.

    Raises:
        QueryFormatError: naming the field.
    """
    obj = _loads(body, "query request")
    args, limit = obj.get("a"), obj.get("max")
    if not isinstance(args, dict):
        raise QueryFormatError("query request needs an 'a' map of arguments")
    if (isinstance(limit, bool) or not isinstance(limit, int)
            or not MIN_ANSWER_BYTES <= limit <= MAX_ANSWER_BYTES):  # fmt: skip
        raise QueryFormatError(f"'max' must be {MIN_ANSWER_BYTES}..{MAX_ANSWER_BYTES} bytes")
    kind = obj.get("q")
    question: Question
    if kind == Latest.KIND:
        question = Latest(_name(args, "check"), _name(args, "target"), args.get("full") is True)
    elif kind == Matrix.KIND:
        window = _time(args, "window", required=True)
        assert window is not None
        if not 0 < window <= MAX_WINDOW:
            raise QueryFormatError(f"'window' must be in (0, {MAX_WINDOW:g}] seconds")
        tag = _name(args, "tag", required=True)
        assert tag is not None
        question = Matrix(tag, _name(args, "check"), window)
    elif kind == History.KIND:
        check, target = _name(args, "check", True), _name(args, "target", True)
        since = _time(args, "since", required=True)
        assert check is not None and target is not None and since is not None
        points = args.get("points")
        if isinstance(points, bool) or not isinstance(points, int) or not 0 < points <= MAX_POINTS:
            raise QueryFormatError(f"'points' must be a whole number in 1..{MAX_POINTS}")
        question = History(check, target, since, _time(args, "until"), points)
    else:
        raise QueryFormatError(f"unknown question {kind!r}; known: latest, matrix, history")
    return question, limit


def encode_answer(data: dict[str, Any]) -> bytes:
    """The body of an answer."""
    return cbor2.dumps({"v": VERSION, "data": data})


def encode_refusal(reason: str) -> bytes:
    """The body of a refusal: the asker may not ask."""
    return cbor2.dumps({"v": VERSION, "refused": reason})


def encode_error(text: str) -> bytes:
    """The body of an error answer: the question was unreadable."""
    return cbor2.dumps({"v": VERSION, "error": text})


class Refused(Exception):
    """The answering agent refused the asker; the message is its reason."""


class AnswerError(Exception):
    """The answering agent could not read the question; the message is its explanation."""


def decode_answer(body: bytes) -> dict[str, Any]:
    """The per-agent answer data.

    Raises:
        Refused: the agent refused to answer.
        AnswerError: the agent could not read the question.
        QueryFormatError: the body is malformed.
    """
    obj = _loads(body, "query answer")
    if isinstance(obj.get("refused"), str):
        raise Refused(obj["refused"])
    if isinstance(obj.get("error"), str):
        raise AnswerError(obj["error"])
    data = obj.get("data")
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise QueryFormatError("query answer needs a 'data' map with text keys")
    return data
