"""CBOR (and plain-mapping) round trip of every result variant, checking every field.

Two forms, one schema:

* The *map* (:func:`to_dict`, JSON output, and what version 1 stored): the schema version
  ``v``, the variant ``kind`` and the envelope fields; payload fields nested under ``result``
  with their Python names (a trailing ``_`` dropped).
* The *compact* array (:func:`encode_result`, what the store keeps): ``[2, kind, field...]``
  with every dataclass as the array of its field values in declaration order. It skips the
  per-record field names and the per-value dict building: the agent encodes every result it
  stores, 1000 a second on a busy host.

Fields are only ever *appended* to a dataclass, each with a default, so a record written by an
older version (shorter arrays, or maps without the newer keys) decodes, with the payload filling
in what it can derive (e.g. ping statistics); a field or array item this build does not know is
refused, never silently dropped. :func:`decode_result` reads both forms.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import cbor2

from meshmon.results.model import VARIANTS, MonitoringResult

SCHEMA_VERSION = 1
"""Version of the map form; :func:`decode_result` rejects versions it does not know."""
COMPACT_VERSION = 2
"""First item of the compact array form."""


class ResultDecodeError(ValueError):
    """Bytes or a mapping are not a valid encoded result; the message says which part is wrong."""


def to_dict(record: MonitoringResult) -> dict[str, Any]:
    """A plain mapping (JSON- and CBOR-friendly: lists for tuples) of a result."""
    if type(record) not in _VARIANT_TYPES:
        raise TypeError(f"{type(record).__name__} is not a MonitoringResult variant")
    data: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": record.KIND}
    for name, key in _fields_of(type(record)):
        data[key] = _plain(getattr(record, name))
    return data


def _wire(name: str) -> str:
    """Encoded key of a field: ``response_time_ms_`` is ``response_time_ms`` on the wire.

    (The trailing ``_`` only keeps the field from shadowing the method in Python.)
    """
    return name.removesuffix("_")


_VARIANT_TYPES = frozenset(VARIANTS.values())
_SCALARS = frozenset({int, float, str, bool, bytes, type(None)})
_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}
"""(attribute, wire key) of each dataclass met, in field order: every stored result is encoded,
so the field walk is done once per class rather than once per value (it was most of the cost of
storing a ping result)."""


def _fields_of(cls: type) -> tuple[tuple[str, str], ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple((f.name, _wire(f.name)) for f in dataclasses.fields(cls))
    return fields


def _plain(value: Any) -> Any:
    cls = type(value)
    if cls in _SCALARS:
        return value
    if cls is tuple or cls is list:
        return [v if type(v) in _SCALARS else _plain(v) for v in value]
    if cls in _FIELDS or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return {key: _plain(getattr(value, name)) for name, key in _fields_of(cls)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _values(value: Any) -> Any:
    """The compact form of a value: dataclasses as arrays of their fields' values."""
    cls = type(value)
    if cls in _SCALARS:
        return value
    if cls is tuple or cls is list:
        return [v if type(v) in _SCALARS else _values(v) for v in value]
    if cls in _FIELDS or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return [_values(getattr(value, name)) for name, _ in _fields_of(cls)]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode_result(record: MonitoringResult) -> bytes:
    """Encode a result as compact CBOR (``[2, kind, field...]``)."""
    if type(record) not in _VARIANT_TYPES:
        raise TypeError(f"{type(record).__name__} is not a MonitoringResult variant")
    return bytes(cbor2.dumps([COMPACT_VERSION, record.KIND, *_values(record)]))


def decode_result(data: bytes) -> MonitoringResult:
    """Decode CBOR from :func:`encode_result`.

    Raises:
        ResultDecodeError: for any malformed input (not CBOR, wrong shape, unknown kind or
            version, a field of the wrong type, trailing bytes).
    """
    try:
        obj = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types (and ValueError/TypeError inside)
        raise ResultDecodeError(f"not valid CBOR: {exc}") from exc
    if isinstance(obj, list):
        return from_dict(_compact_to_dict(obj))
    return from_dict(obj)


def _compact_to_dict(obj: list[Any]) -> dict[str, Any]:
    """The map form of a compact array, so one validator checks both forms."""
    if len(obj) < 2 or obj[0] != COMPACT_VERSION:
        version = obj[0] if obj else None
        raise ResultDecodeError(f"unknown compact schema version {version!r} (this build reads "
                                f"{COMPACT_VERSION}); upgrade meshmon")  # fmt: skip
    kind = obj[1]
    cls = VARIANTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ResultDecodeError(f"unknown result kind {kind!r}; expected one of {sorted(VARIANTS)}")
    return {"v": SCHEMA_VERSION, "kind": kind, **_unpack_fields(cls, obj[2:], kind)}


def _unpack_fields(cls: type, values: list[Any], path: str) -> dict[str, Any]:
    fields = _fields_of(cls)
    if len(values) > len(fields):
        raise ResultDecodeError(f"{path}: {len(values) - len(fields)} more field(s) than this "
                                "build knows; upgrade meshmon")  # fmt: skip
    hints = _hints(cls)
    return {key: _unpack(hints[name], value, f"{path}.{key}")
            for (name, key), value in zip(fields, values, strict=False)}  # fmt: skip


def _unpack(hint: Any, value: Any, path: str) -> Any:
    """Turn compact arrays back into maps where ``hint`` expects a dataclass (else as is)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, list):
            raise ResultDecodeError(f"{path}: expected an array, got {type(value).__name__}")
        return _unpack_fields(hint, value, path)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType) and isinstance(value, list):
        for option in get_args(hint):
            if isinstance(option, type) and dataclasses.is_dataclass(option):
                return _unpack(option, value, path)
    if origin is tuple and isinstance(value, list):
        item = get_args(hint)[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            return [_unpack(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(obj: Any) -> MonitoringResult:
    """Build a result from :func:`to_dict`'s mapping, checking every field.

    Raises:
        ResultDecodeError: when anything is missing, unknown or of the wrong type.
    """
    if not isinstance(obj, dict):
        raise ResultDecodeError(f"a result must be a map, not {type(obj).__name__}")
    obj = dict(obj)
    version = obj.pop("v", None)
    if version != SCHEMA_VERSION:
        raise ResultDecodeError(f"unknown schema version {version!r} (this build reads "
                                f"{SCHEMA_VERSION}); upgrade meshmon")  # fmt: skip
    kind = obj.pop("kind", None)
    cls = VARIANTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ResultDecodeError(f"unknown result kind {kind!r}; expected one of {sorted(VARIANTS)}")
    return typing.cast(MonitoringResult, _build(cls, obj, kind))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type, obj: Any, path: str) -> Any:
    if not isinstance(obj, dict):
        raise ResultDecodeError(f"{path}: expected a map, got {type(obj).__name__}")
    hints = _hints(cls)
    names = {_wire(f.name) for f in dataclasses.fields(cls)}
    unknown = set(obj) - names
    if unknown:
        raise ResultDecodeError(f"{path}: unknown field(s) {sorted(map(str, unknown))}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = _wire(f.name)
        if key not in obj:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ResultDecodeError(f"{path}.{key}: missing")
            continue
        kwargs[f.name] = _check(hints[f.name], obj[key], f"{path}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ResultDecodeError(f"{path}: {exc}") from exc


def _check(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _check(option, value, path)
            except ResultDecodeError:
                continue
        raise ResultDecodeError(f"{path}: {value!r} matches none of {hint}")
    if origin is Literal:
        if value in get_args(hint) and not isinstance(value, bool):
            return value
        raise ResultDecodeError(f"{path}: {value!r} is not one of {get_args(hint)}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ResultDecodeError(f"{path}: expected an array, got {type(value).__name__}")
        item = get_args(hint)[0]
        return tuple(_check(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ResultDecodeError(f"{path}: expected a map with text keys")
        return dict(value)
    if hint is type(None):
        if value is None:
            return None
        raise ResultDecodeError(f"{path}: expected null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ResultDecodeError(f"{path}: expected a boolean, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ResultDecodeError(f"{path}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ResultDecodeError(f"{path}: expected a finite number, got {value!r}")
            return float(value)
        raise ResultDecodeError(f"{path}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ResultDecodeError(f"{path}: expected text, got {type(value).__name__}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    raise ResultDecodeError(f"{path}: cannot decode type {hint}")  # pragma: no cover
