"""Typed decoding of TOML data into frozen dataclasses.

Theory of operation
-------------------
Configuration sections are plain frozen dataclasses. This module walks their type hints and
turns the parsed TOML mapping into instances, so adding a section or a field needs no parser
code. The rules it keeps:

* Every key in the input must name a field; an unknown key is an error (it is usually a typo).
* A missing key takes the field's default; a field without a default is required.
* Each value is checked against its annotation. Besides the basic TOML types it understands
  ``Seconds`` (``"500ms"``, ``"10s"``, ``"2m"``, or a plain number of seconds), ``ByteSize``
  (``"64MiB"``, ``"1GB"``, or a plain integer), ``Path`` (relative paths are taken from the
  config file's folder), ``Literal[...]`` choices, ``tuple[X, ...]`` and ``dict[str, X]``.
* A dataclass may validate itself in ``__post_init__`` by raising :class:`FieldError` (or
  :class:`FieldErrors` for several at once); the loader adds the key path and the file.
* Every problem is collected, not just the first: a field that fails is recorded and decoding
  goes on with its siblings; a table with a failed field is not built (its own checks would
  only repeat the problem), and neither is anything that contains it.

Every error is a :class:`ConfigError` naming the file, the key path (``checks[2].interval``),
what was wrong and what is allowed, in one line. Decoding raises :class:`ConfigErrors` holding
them all, in file order.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, NewType, TypeVar, Union, get_args, get_origin

Seconds = NewType("Seconds", float)
"""A duration in seconds, written in TOML as ``"500ms"``, ``"10s"``, ``"5m"`` or a number."""

ByteSize = NewType("ByteSize", int)
"""A size in bytes, written in TOML as ``"64MiB"``, ``"1GB"``, ``"512KiB"`` or an integer."""

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration value is wrong; the message names the file, the key and the fix."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class ConfigErrors(ConfigError):
    """Several configuration errors, one line each; the attributes are the first one's."""

    def __init__(self, errors: list[ConfigError], partial: dict[str, Any] | None = None) -> None:
        first = errors[0]
        super().__init__(first.source, first.key, first.problem)
        self.errors = errors
        self.partial: dict[str, Any] = partial or {}
        """Top-level sections that decoded fine (so later checks can still look at them)."""
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


class FieldError(ValueError):
    """Raised by a dataclass's ``__post_init__`` to reject one of its own fields."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class FieldErrors(ValueError):
    """Raised by a dataclass's ``__post_init__`` to reject several of its fields at once."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class _Invalid(Exception):
    """A part failed to decode; its errors are already recorded."""


_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b)\s*$", re.IGNORECASE)


def read_toml(path: Path, missing: str) -> dict[str, Any]:
    """The parsed TOML of a config file.

    Args:
        path: the file.
        missing: what to tell the operator when the file does not exist ("create it or ...").

    Raises:
        ConfigError: the file is missing or unreadable, or is not TOML; the message names it.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", f"file not found; {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None


def parse_duration(text: str | int | float) -> float:
    """Parse ``"500ms"``, ``"10s"``, ``"1.5m"`` (or a bare number of seconds) into seconds.

    Raises:
        ValueError: the text is not a non-negative duration; the message lists the units.
    """
    if isinstance(text, bool):
        raise ValueError("expected a duration such as \"500ms\" or \"10s\", got a boolean")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"a duration cannot be negative, got {text}")
        return float(text)
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit "
            f"({', '.join(_DURATION_UNITS)}), e.g. \"500ms\" or \"10s\""
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """Render seconds the way a config file would write them (``"1.5s"``, ``"200ms"``)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_size(text: str | int) -> int:
    """Parse ``"64MiB"``, ``"1GB"`` (or a bare integer of bytes) into bytes."""
    if isinstance(text, bool):
        raise ValueError("expected a size such as \"64MiB\", got a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative, got {text}")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a size; write a number and a unit (B, KB, MB, GB, KiB, MiB, GiB), "
            "e.g. \"256MiB\""
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def _type_name(tp: Any) -> str:
    if tp is Seconds:
        return "a duration such as \"10s\""
    if tp is ByteSize:
        return "a size such as \"64MiB\""
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             Path: "a file path"}  # fmt: skip
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp):
        return "a table"
    origin = get_origin(tp)
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a table"
    return str(tp)


class _Decoder:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self.partial: dict[str, Any] = {}

    def collect(self, tp: Any, value: Any, key: str) -> tuple[bool, Any]:
        """Decode one part; on failure record why and return ``(False, None)``."""
        try:
            return True, self.decode(tp, value, key)
        except ConfigError as exc:
            self.errors.append(exc)
        except _Invalid:
            pass
        return False, None

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, key, problem)

    def decode(self, tp: Any, value: Any, key: str) -> Any:
        origin = get_origin(tp)
        if tp is Any or tp is object:
            return value
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if value is None and len(options) < len(get_args(tp)):
                return None
            problems = []
            for option in options:
                try:
                    return self.decode(option, value, key)
                except ConfigError as exc:
                    problems.append(exc.problem)
            raise self.fail(key, "; or ".join(problems))
        if origin is Literal:
            allowed = get_args(tp)
            if value not in allowed:
                choices = ", ".join(repr(a) for a in allowed)
                raise self.fail(key, f"{value!r} is not allowed; choose one of {choices}")
            return value
        if tp is Seconds:
            try:
                return parse_duration(value)
            except (ValueError, TypeError) as exc:
                raise self.fail(key, str(exc)) from None
        if tp is ByteSize:
            try:
                return parse_size(value)
            except (ValueError, TypeError) as exc:
                raise self.fail(key, str(exc)) from None
        if tp is Path:
            if not isinstance(value, str) or not value:
                raise self.fail(key, f"expected a file path, got {value!r}")
            path = Path(value).expanduser()
            return path if path.is_absolute() else (self.base_dir / path)
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(key, f"expected true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"expected an integer, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(key, f"expected a number, got {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise self.fail(key, f"expected a string, got {value!r}")
            return value
        if origin is tuple:
            item_type = get_args(tp)[0]
            if not isinstance(value, list):
                raise self.fail(key, f"expected {_type_name(tp)}, got {value!r}")
            items = [self.collect(item_type, v, f"{key}[{i}]") for i, v in enumerate(value)]
            if not all(ok for ok, _ in items):
                raise _Invalid
            return tuple(item for _, item in items)
        if origin is dict:
            _, value_type = get_args(tp)
            if not isinstance(value, dict):
                raise self.fail(key, f"expected a table, got {value!r}")
            pairs = {k: self.collect(value_type, v, f"{key}.{k}") for k, v in value.items()}
            if not all(ok for ok, _ in pairs.values()):
                raise _Invalid
            return {k: item for k, (_, item) in pairs.items()}
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.decode_dataclass(tp, value, key)
        raise TypeError(f"configload cannot decode {tp!r} (at {key})")

    def decode_dataclass(self, cls: type[T], value: Any, key: str) -> T:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {value!r}")
        hints = typing.get_type_hints(cls)
        fields = {toml_key(f.name): f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                  if f.init}
        prefix = f"{key}." if key else ""
        failed = False
        allowed = ", ".join(sorted(fields))
        for name in value:
            if name not in fields:
                self.errors.append(self.fail(f"{prefix}{name}",
                                             f"unknown key (allowed here: {allowed})"))
                failed = True
        kwargs = {}
        for name, field in fields.items():
            ok, item = True, None
            hint = hints[field.name]
            if name in value:
                ok, item = self.collect(hint, value[name], f"{prefix}{name}")
            elif dataclasses.is_dataclass(hint):
                ok, item = self.collect(hint, {}, f"{prefix}{name}")
            elif hint is Path and isinstance(field.default, Path):
                # relative default paths, like explicit ones, are taken from the file's folder
                ok, item = self.collect(Path, str(field.default), f"{prefix}{name}")
            elif (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                self.errors.append(self.fail(f"{prefix}{name}", "is required but missing"))
                ok = False
            else:
                continue
            failed = failed or not ok
            if ok:
                kwargs[field.name] = item
                if not key:
                    self.partial[field.name] = item
        if failed:
            raise _Invalid
        try:
            return cls(**kwargs)
        except FieldError as exc:
            raise self.fail(f"{prefix}{exc.field}", exc.problem) from None
        except FieldErrors as exc:
            self.errors.extend(self.fail(f"{prefix}{e.field}", e.problem) for e in exc.errors)
            raise _Invalid from None


def toml_key(field_name: str) -> str:
    """The TOML key of a dataclass field: ``for_`` is written ``for`` (a Python keyword)."""
    bare = field_name.removesuffix("_")
    return bare if bare != field_name and keyword.iskeyword(bare) else field_name


def decode(cls: type[T], data: dict[str, Any], source: str, base_dir: Path) -> T:
    """Decode ``data`` (parsed TOML) into ``cls``; errors name ``source`` and the key path.

    Raises:
        ConfigErrors: every problem found, one line each (``.partial`` holds the top-level
            fields that decoded).
    """
    decoder = _Decoder(source, base_dir)
    ok, result = decoder.collect(cls, data, "")
    if not ok:
        raise ConfigErrors(decoder.errors or [decoder.fail("", "invalid")], decoder.partial)
    return typing.cast(T, result)


def encode(value: Any) -> Any:
    """Turn a config dataclass back into TOML-shaped data (for printing the effective config)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = typing.get_type_hints(type(value))
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            hint = hints[f.name]
            if hint is Seconds:
                out[toml_key(f.name)] = format_duration(item)
            else:
                out[toml_key(f.name)] = encode(item)
        return out
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
