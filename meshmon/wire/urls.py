"""Aggregator URLs: their syntax, as configured (``[sync] urls``) and as gossiped.

An aggregator is reached at ``https://HOST[:PORT][/PREFIX]``; the agent POSTs to
``PREFIX + /v1/ingest`` there over the mesh's mutual TLS. HOST is an IP address or a DNS name
(never resolved here). A URL gossiped in a member's metadata is a hint only: the uploader still
requires the server's certificate to carry the ``aggregator`` tag from the mesh CA.

Pure functions, no I/O; the same rules apply to a config file and to a datagram, with tighter
length limits for what is gossiped (every announcement must fit in one datagram).
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from meshmon.wire.ingest import PATH

MAX_URL = 2048
"""Longest URL accepted in a config file."""
MAX_GOSSIP_URL = 128
"""Longest URL a member may advertise in its metadata."""
MAX_GOSSIP_URLS = 4
"""Most URLs a member may advertise (4 x 128 bytes fit an announcement's datagram)."""

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _host_problem(host: str) -> str | None:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not a valid IPv6 address"
        return None
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host.removesuffix("."))
        except ValueError:
            return f"{host!r} is not a valid IPv4 address"
        return None
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        return f"{host!r} is not a valid host name"
    return None


def url_problem(text: str, max_len: int = MAX_URL) -> str | None:
    """Why ``text`` is not an aggregator URL, or ``None``. Never resolves anything."""
    if not isinstance(text, str) or not text:
        return "empty; write https://HOST:PORT"
    if len(text) > max_len:
        return f"longer than {max_len} characters"
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        return f"{text[:60]!r} holds spaces, control or non-ASCII characters"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"{text!r} is not a URL ({exc}); write https://HOST:PORT"
    if parts.scheme.lower() != "https":
        return (f"{text!r}: the scheme must be https (the aggregator is reached over the "
                "mesh's mutual TLS)")  # fmt: skip
    if parts.username is not None or parts.password is not None:
        return f"{text!r} holds a user name or password; the mesh certificate is the identity"
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        return f"{text!r} holds a query or fragment; give only https://HOST:PORT[/PREFIX]"
    host = parts.hostname or ""
    if not host:
        return f"{text!r} has no host; write https://HOST:PORT"
    problem = _host_problem(host)
    if problem:
        return problem
    if port == 0:
        return f"{text!r}: port 0 is not a port; use 1-65535"
    return None


def normalize(text: str) -> str:
    """The form URLs are compared and shown in: lowercase scheme and host, no trailing ``/``.

    The caller has checked ``text`` with :func:`url_problem`.
    """
    parts = urlsplit(text)
    host, port = parts.netloc, ""
    if not host.endswith("]") and ":" in host:
        host, _, port = host.rpartition(":")
    return f"https://{host.lower()}{':' + port if port else ''}{parts.path.rstrip('/')}"


def ingest_url(base: str) -> str:
    """Where a batch is POSTed for the aggregator at ``base``."""
    return base.rstrip("/") + PATH
