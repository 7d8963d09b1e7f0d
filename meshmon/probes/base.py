"""What every probe shares: the context it runs in, target parsing, resolution, family choice.

Family policy (never a silent fallback): a check's ``family`` param is ``4``, ``6``, ``both`` or
``auto`` (the default). ``auto`` means the family of an IP literal, or for a name the family of
the first address the resolver returns (the system's RFC 6724 preference); the family used is
recorded in the result. If that address fails, the probe fails — it does not quietly try the
other family. ``both`` produces one result per family; a family the name has no address for
gives an error result for that family.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from meshmon.probes.icmp import IcmpEngine

FamilyChoice = Literal["auto", "4", "6", "both"]


class ProbeError(Exception):
    """Base of probe errors that become error results (never escape :func:`run_probe`)."""


class ParamError(ProbeError, ValueError):
    """A check's ``params`` are wrong; the message names the key and what is allowed."""


class ResolveError(ProbeError):
    """A name did not resolve (or has no address of the requested family)."""


@dataclass(frozen=True)
class UdpCodec:
    """How UDP echo datagrams between agents are sealed and opened.

    The mesh's sealing (``meshmon.wire``) plugs in here: ``seal(plaintext, peer)`` returns the
    datagram to send, ``open(datagram, peer)`` returns the plaintext or ``None`` when the
    datagram is not authentic (it is then dropped, as any unauthenticated input). The default is
    plain: both identity functions.
    """

    seal: Callable[[bytes, tuple[str, int]], bytes] = lambda data, peer: data
    """Plain mode: send as is."""
    open: Callable[[bytes, tuple[str, int]], bytes | None] = lambda data, peer: data
    """Plain mode: accept as is."""
    name: str = "plain"
    """Shown in results and logs."""


PLAIN = UdpCodec()


@dataclass
class ProbeContext:
    """What the agent gives the probes: who is measuring, and shared services."""

    agent: str = "cli"
    """Node name recorded in results."""
    check: str = "cli"
    """Check name recorded in results."""
    icmp: IcmpEngine | None = None
    """The running ICMP engine (needed by ``ping`` and ICMP ``trace``)."""
    udp_codec: UdpCodec = field(default_factory=UdpCodec)
    """Sealing for agent-to-agent UDP echo (``mode = "echo"``)."""
    echo_port: int | None = None
    """Port of this agent's own UDP echo responder, when it runs one."""


def param(params: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """``params[key]`` checked against ``kind`` (``default`` when absent).

    Raises:
        ParamError: naming the key, the value and the expected type.
    """
    if key not in params:
        return default
    value = params[key]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))
    if float in _tuple(kind) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        names = " or ".join(t.__name__ for t in _tuple(kind))
        raise ParamError(f"params.{key} must be {names}, not {value!r}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def family_choice(params: Mapping[str, Any]) -> FamilyChoice:
    """The ``family`` param normalised to ``auto``, ``4``, ``6`` or ``both``."""
    value = str(params.get("family", "auto")).lower().removeprefix("ipv")
    if value not in ("auto", "4", "6", "both"):
        raise ParamError(f"params.family must be 4, 6, both or auto, not {params['family']!r}")
    return value  # type: ignore[return-value]


def family_choice_or_none(params: Mapping[str, Any]) -> FamilyChoice | None:
    """:func:`family_choice`, or ``None`` when the param is invalid (reported elsewhere)."""
    try:
        return family_choice(params)
    except ParamError:
        return None


def split_host_port(target: str, default_port: int | None) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, bare IPv6, or a URL → (host, port)."""
    if "://" in target:
        url = urlsplit(target)
        port = url.port or {"http": 80, "https": 443}.get(url.scheme, default_port)
        return url.hostname or "", port
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else default_port
        return host, port
    if target.count(":") == 1:
        host, _, port_text = target.partition(":")
        if not port_text.isdigit():
            raise ParamError(f"target {target!r}: port must be a number")
        return host, int(port_text)
    return target, default_port


_DOTTED_QUAD = re.compile(r"^([0-9]{1,3}[.]){3}[0-9]{1,3}$")


def _looks_like_ip(host: str) -> bool:
    """icmplib's ``is_ipv4_address or is_ipv6_address``, without importing icmplib (which pulls
    in asyncio, ~2 MiB in every agent): a dotted quad, or anything with a colon."""
    return ":" in host or _DOTTED_QUAD.match(host) is not None


@functools.lru_cache(maxsize=8192)
def _literal(host: str) -> tuple[int, str]:
    """(4 or 6, normalised address) for an IP literal, (0, "") for a name.

    Cached: an agent probes the same targets every interval.
    """
    if _looks_like_ip(host):
        address = ipaddress.ip_address(host.split("%")[0])
        return address.version, str(address)
    return 0, ""


def literal_address(host: str) -> tuple[int, str]:
    """``(4 or 6, normalised address)`` when ``host`` is an IP literal, else ``(0, "")``."""
    return _literal(host)


def literal_family(host: str) -> int:
    """4 or 6 when ``host`` is an IP literal, else 0."""
    return _literal(host)[0]


async def resolve(host: str, choice: FamilyChoice) -> list[tuple[int, str | None, str | None]]:
    """Addresses to probe: ``(family, address, error)`` per family to measure.

    A literal is used as is. A name is resolved once; for ``both`` the first address of each
    family is used, and a family with no address yields ``(family, None, reason)``.

    Raises:
        ResolveError: the name does not resolve at all, or a literal's family contradicts the
            requested one.
    """
    fam, normalised = _literal(host)
    if fam:
        if choice in ("4", "6") and int(choice) != fam:
            raise ResolveError(f"{host} is an IPv{fam} address but the check asks for IPv{choice}")
        literal: tuple[int, str | None, str | None] = (fam, normalised, None)
        if choice == "both":  # one result per family, as promised: the other one says why
            other = 10 - fam
            why = f"{host} is an IPv{fam} address: nothing to probe over IPv{other}"
            return sorted([literal, (other, None, why)], key=lambda x: x[0])
        return [literal]
    af = {"4": socket.AF_INET, "6": socket.AF_INET6}.get(choice, socket.AF_UNSPEC)
    try:
        infos = await trio.socket.getaddrinfo(host, None, af, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        fam_text = f" (IPv{choice})" if choice in ("4", "6") else ""
        raise ResolveError(f"cannot resolve {host!r}{fam_text}: {exc.strerror}") from exc
    except UnicodeError as exc:  # Python's IDNA encoding refuses the name before any lookup
        raise ResolveError(f"cannot resolve {host!r}: not a valid host name ({exc})") from exc
    by_family: dict[int, str] = {}
    for info in infos:
        fam = 4 if info[0] == socket.AF_INET else 6
        by_family.setdefault(fam, str(info[4][0]))
    if choice == "both":
        return [(f, by_family.get(f), None if f in by_family else f"{host!r} has no IPv{f} "
                 "address") for f in (4, 6)]  # fmt: skip
    first = 4 if infos[0][0] == socket.AF_INET else 6
    return [(first, by_family[first], None)]


@dataclass
class Stopwatch:
    """Wall-clock start and monotonic duration of one probe."""

    started_at: float = field(default_factory=time.time)
    _t0: float = field(default_factory=time.monotonic)

    def elapsed_ms(self) -> float:
        """Milliseconds since start (monotonic: never negative)."""
        return (time.monotonic() - self._t0) * 1000.0
