"""Declared params and target syntax of a probe kind: what is checked before a check ever runs.

Theory of operation
-------------------
Every probe kind declares a :class:`ParamSchema` beside its code: each param it understands
(:class:`Param`: accepted TOML types, range or choices, an extra rule), rules that tie params to
each other or to the check's timeout, and the syntax of its targets (host, ``host:port``, URL).
:func:`validate_params` and :meth:`ParamSchema.check_target` turn a check's ``params`` and
``targets`` into a list of :data:`Issue` — ``(key, problem)`` with the key relative to the check
(``params.count``, ``targets[2]``) — so the config loader can name the file and the full key
path, and report every problem at once. They never resolve a name or touch the network.

The same schema guards the probes at run time (:func:`meshmon.probes.registry.check_params`), so
what ``meshmon config check`` accepts is exactly what the probes accept. Plugins may declare
theirs (see :mod:`meshmon.probes.plugin`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Issue = tuple[str, str]
"""``(key, problem)``: the key relative to the check (``params.count``), what is wrong."""

TargetRule = Callable[[str, Mapping[str, Any]], str | None]
"""``rule(target, params)`` → the problem with the target's syntax, or ``None``."""

Rule = Callable[[Mapping[str, Any], float], Iterable[Issue]]
"""``rule(params, timeout)`` → issues between params (run once every param is valid alone)."""

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a table"}  # fmt: skip


@dataclass(frozen=True)
class Param:
    """One param a probe kind understands."""

    types: tuple[type, ...]
    """Accepted TOML types (``float`` also takes integers; ``int`` never takes booleans)."""
    doc: str = ""
    """What it means and its default, for ``allowed`` texts and docs."""
    low: float | None = None
    """Smallest allowed value (numbers)."""
    high: float | None = None
    """Largest allowed value (numbers)."""
    choices: tuple[Any, ...] = ()
    """The only allowed values, if set."""
    rule: Callable[[Any], str | None] | None = None
    """A further check of a value of the right type: returns the problem, or ``None``."""

    def allowed(self) -> str:
        """What a valid value looks like, e.g. ``an integer 1-1000``."""
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        text = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in self.types)
        if self.low is not None and self.high is not None:
            return f"{text} {self.low:g}-{self.high:g}"
        if self.low is not None:
            return f"{text} >= {self.low:g}"
        if self.high is not None:
            return f"{text} <= {self.high:g}"
        return text

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or ``None``."""
        if not _has_type(value, self.types):
            return f"expected {self.allowed()}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not allowed; expected {self.allowed()}"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and ((self.low is not None and value < self.low) or
                       (self.high is not None and value > self.high)):  # fmt: skip
            return f"{value!r} is out of range; expected {self.allowed()}"
        return self.rule(value) if self.rule is not None else None


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def any_target(target: str, params: Mapping[str, Any]) -> str | None:
    """Any non-empty text without spaces (plugins that declare nothing more)."""
    if not target.strip():
        return "is empty; write the target to probe"
    if any(c.isspace() for c in target):
        return f"{target!r} contains whitespace"
    return None


@dataclass(frozen=True)
class ParamSchema:
    """The params and target syntax of one probe kind."""

    params: Mapping[str, Param] = field(default_factory=dict)
    """Every param the kind understands; any other key is an error (usually a typo)."""
    target: TargetRule = any_target
    """The syntax of a static target."""
    rules: tuple[Rule, ...] = ()
    """Checks across params and the check's timeout."""
    parse: Callable[[Mapping[str, Any], float], object] | None = None
    """The probe's own parser, run last as a safety net: a ``ValueError`` it raises is an issue."""
    strict: bool = True
    """Unknown params are errors; ``False`` only for plugins that declare none (all pass)."""

    def check_target(self, target: str, params: Mapping[str, Any]) -> str | None:
        """The problem with ``target``'s syntax, or ``None``."""
        return self.target(target, params)


def validate_params(kind: str, schema: ParamSchema, params: Mapping[str, Any],
                    timeout: float) -> list[Issue]:  # fmt: skip
    """Every problem with a check's ``params`` (an empty list when they are fine). Pure."""
    issues: list[Issue] = []
    known = sorted(schema.params)
    unknown = set(params) - set(schema.params) if schema.strict else set()
    for key in sorted(unknown, key=str):
        import difflib  # only for a typo's hint: not loaded by every agent

        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        issues.append((f"params.{key}", f"unknown param for a {kind} check; {hint}"
                       f"known: {', '.join(known) or 'none'}"))  # fmt: skip
    for key, spec in schema.params.items():
        if key in params:
            problem = spec.problem(params[key])
            if problem:
                issues.append((f"params.{key}", problem))
    if issues:
        return issues
    for rule in schema.rules:
        issues.extend(rule(params, timeout))
    if not issues and schema.parse is not None:
        try:
            schema.parse(params, timeout)
        except (ValueError, TypeError) as exc:
            issues.append(("params", str(exc)))
    return issues


# --- shared params --------------------------------------------------------------------------


def _family_rule(value: Any) -> str | None:
    if str(value).lower().removeprefix("ipv") in ("auto", "4", "6", "both"):
        return None
    return f"{value!r} is not a family; use 4, 6, \"both\" or \"auto\""


FAMILY = Param((int, str), "4, 6, \"both\" or \"auto\" (default: the resolver's first address)",
               rule=_family_rule)  # fmt: skip
PORT = Param((int,), "destination port", low=1, high=65535)


def regex_rule(value: Any) -> str | None:
    """A param that must compile as a Python regex."""
    try:
        re.compile(value)
    except re.error as exc:
        return f"{value!r} is not a valid regex: {exc}"
    return None


def fits_timeout(count_key: str, default_count: int, interval_key: str,
                 default_interval: float) -> Rule:  # fmt: skip
    """A rule: ``(count - 1) * interval`` must end before the check's timeout."""

    def rule(params: Mapping[str, Any], timeout: float) -> Iterable[Issue]:
        count = params.get(count_key, default_count)
        interval = params.get(interval_key, default_interval)
        if (count - 1) * interval >= timeout:
            yield (f"params.{count_key}", f"{count_key}={count} × {interval_key}={interval}s "
                   f"does not fit the check's timeout of {timeout:g}s; lower {count_key} or "
                   f"{interval_key}, or raise timeout")  # fmt: skip

    return rule


# --- target syntax --------------------------------------------------------------------------

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither a host name nor an IP address, or ``None``. Never resolves."""
    if not host:
        return "has no host"
    if ":" in host:  # only an IPv6 address has colons
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"{host!r} is not a valid IPv6 address"
        return None
    name = host.removesuffix(".")
    labels = name.split(".")
    if all(label.isdigit() for label in labels):  # dotted numbers can only be an IPv4 address
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return (f"{host!r} is not a valid host name: use letters, digits and '-' in "
                "dot-separated labels of 1-63 characters, not starting or ending with '-'")
    return None


def split_target(text: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address → (host, port).

    The port is returned as text (``None`` when absent); nothing is checked but the brackets.

    Raises:
        ValueError: a ``[`` without its ``]``, or text after ``]`` that is not ``:port``.
    """
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            raise ValueError(f"{text!r} opens '[' without closing it; write [v6 address]:port")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r} has {rest!r} after ']'; write [v6 address]:port")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None  # a name, an IPv4 address or a bare IPv6 address


def port_problem(text: str) -> str | None:
    """Why ``text`` is not a port number 1-65535, or ``None``."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        return f"port {text!r} is not a number 1-65535"
    return None


def _in(target: str, problem: str | None) -> str | None:
    return f"{target!r}: {problem}" if problem else None


def host_target(target: str, params: Mapping[str, Any]) -> str | None:
    """A host name or IP address, without a port (``ping``, ``trace``)."""
    if "://" in target:
        return f"{target!r} is a URL; write just the host name or address"
    try:
        host, port = split_target(target)
    except ValueError as exc:
        return str(exc)
    problem = host_problem(host)
    if problem is None and port is not None:
        return (f"{target!r} has a port, but this kind probes a host; drop ':{port}' "
                "(a tcp or udp trace takes params.port)")
    return problem


def host_port_target(default_port: Callable[[Mapping[str, Any]], int | None]) -> TargetRule:
    """``host:port``, or a host when ``params.port`` (or ``default_port(params)``) gives one."""

    def rule(target: str, params: Mapping[str, Any]) -> str | None:
        if "://" in target:
            return f"{target!r} is a URL; write host:port"
        try:
            host, port = split_target(target)
        except ValueError as exc:
            return str(exc)
        problem = host_problem(host)
        if problem:
            return problem
        if port is not None:
            return _in(target, port_problem(port))
        if "port" not in params and default_port(params) is None:
            return (f"{target!r} has no port; write host:port (e.g. \"{host}:443\") or set "
                    "params.port")
        return None

    return rule


def url_target(target: str, params: Mapping[str, Any]) -> str | None:
    """An ``http://`` or ``https://`` URL, or ``host[:port]`` (fetched as ``http://host/``)."""
    if any(c.isspace() for c in target):
        return f"{target!r} contains whitespace; encode spaces in a URL as %20"
    if "://" not in target:
        try:
            host, port = split_target(target)
        except ValueError as exc:
            return str(exc)
        return host_problem(host) or (_in(target, port_problem(port)) if port is not None else None)
    try:
        url = urlsplit(target)
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"{target!r} is not a valid URL ({exc})"
    if url.scheme not in ("http", "https"):
        return f"{target!r}: scheme {url.scheme!r} is not allowed; use http:// or https://"
    host = url.hostname or ""
    problem = host_problem(host)
    return f"{target!r} {problem}" if problem == "has no host" else problem
