"""``http``: an HTTP request over a fresh connection → :class:`HttpGetResult`.

Params: ``method`` (``GET`` by default; ``HEAD``, ``POST``, ``PUT``, ``PATCH``, ``DELETE``,
``OPTIONS``), ``body`` (text sent with the request, e.g. for ``POST``), ``headers`` (a table of
request headers), ``expect_status`` (an int or a list; default: any 2xx or 3xx), ``body_regex``
(searched in the first ``max_body_bytes`` of the *decoded* body: gzip, x-gzip and deflate
content encodings are undone first), ``follow_redirects`` (default false: a monitor should see
the redirect itself), ``max_redirects`` (5), ``verify_tls`` (true), ``ca_file`` (extra trust
anchors, e.g. a private CA), ``max_body_bytes`` (1 MiB), ``family`` (4, 6, both or auto).

Every request opens a fresh connection (a monitor measures connect time; a kept-alive one would
hide it) through :mod:`meshmon.probes.http_client`, which also explains the cost choices.
Timings, from the start of the first connection attempt: connection established (TCP, plus TLS
for https), response headers (first byte) and last body byte (``response_time_ms``, as curl's
``time_total``); with redirects followed, connect and first byte are those of the last hop.
``response_size_bytes`` counts the body as it came over the wire (before content decoding).
The name is resolved as every probe does (:func:`meshmon.probes.base.resolve`: one address,
the family asked for or the resolver's first). Proxy variables (``HTTP_PROXY`` ...) are not
used: a monitor measures the direct path from its host.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import trio

from meshmon.probes.base import FamilyChoice, ParamError, ProbeError, param, resolve
from meshmon.probes.http_client import Exchange, HttpClientError, exchange, tls_context
from meshmon.probes.params import FAMILY, Param, ParamSchema, regex_rule, url_target
from meshmon.probes.tcp import connect_error_text
from meshmon.results import HttpGetResult

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""Request methods a check may use."""


@dataclass(frozen=True)
class HttpParams:
    """Parameters of an ``http`` check."""

    method: str = "GET"
    """Request method, one of :data:`METHODS`."""
    body: bytes | None = None
    """Request body (UTF-8 of the ``body`` param); ``None`` sends none."""
    expect_status: tuple[int, ...] = ()
    """Accepted status codes; empty accepts 200-399."""
    body_regex: str | None = None
    """A regex the body must contain; ``None`` does not look at the body."""
    follow_redirects: bool = False
    """Off by default: a redirect is an answer worth seeing, not hiding."""
    max_redirects: int = 5
    """When following, give up after this many (browsers allow 20; 5 is plenty)."""
    verify_tls: bool = True
    """Verify the server certificate (the ``tls`` check reports certificate details)."""
    ca_file: str | None = None
    """Extra CA bundle to trust (PEM)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra request headers."""
    max_body_bytes: int = 1024 * 1024
    """Body bytes kept for the regex; the size counts the whole body."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> HttpParams:
        """Validated parameters."""
        raw = params.get("expect_status", [])
        statuses = (raw,) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if not isinstance(statuses, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise ParamError("params.expect_status must be a status code or a list of them")
        body = param(params, "body_regex", str, None)
        if body is not None:
            try:
                re.compile(body)
            except re.error as exc:
                raise ParamError(f"params.body_regex is not a valid regex: {exc}") from None
        headers = param(params, "headers", dict, {})
        method = param(params, "method", str, cls.method).upper()
        if method not in METHODS:
            raise ParamError(f"params.method must be one of {', '.join(METHODS)}, not {method!r}")
        if method == "HEAD" and body is not None:
            raise ParamError("params.body_regex cannot match anything: a HEAD response has no "
                             "body; use GET or drop body_regex")  # fmt: skip
        request_body = param(params, "body", str, None)
        return cls(
            method, None if request_body is None else request_body.encode(),
            tuple(statuses), body,
            param(params, "follow_redirects", bool, cls.follow_redirects),
            param(params, "max_redirects", int, cls.max_redirects),
            param(params, "verify_tls", bool, cls.verify_tls),
            param(params, "ca_file", str, None),
            {str(k): str(v) for k, v in headers.items()},
            param(params, "max_body_bytes", int, cls.max_body_bytes),
        )  # fmt: skip


def _method_rule(value: str) -> str | None:
    if value.upper() in METHODS:
        return None
    return f"{value!r} is not a method meshmon sends; expected one of {', '.join(METHODS)}"


def _status_rule(value: Any) -> str | None:
    codes = value if isinstance(value, list) else [value]
    if all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
        return None
    return f"{value!r} is not a status code 100-599 or a list of them"


def _headers_rule(value: dict[str, Any]) -> str | None:
    bad = [k for k, v in value.items() if not isinstance(v, str)]
    return f"header {bad[0]!r} must be a string" if bad else None


PARAMS = ParamSchema(
    params={
        "expect_status": Param((int, list), "accepted status code(s) (any 2xx or 3xx)",
                               rule=_status_rule),
        "body_regex": Param((str,), "regex the body must contain", rule=regex_rule),
        "follow_redirects": Param((bool,), "follow redirects (false)"),
        "max_redirects": Param((int,), "redirects followed at most (5)", low=0, high=100),
        "verify_tls": Param((bool,), "verify the server certificate (true)"),
        "ca_file": Param((str,), "extra CA bundle (PEM) to trust"),
        "headers": Param((dict,), "extra request headers", rule=_headers_rule),
        "max_body_bytes": Param((int,), "body bytes kept for body_regex (1 MiB)", low=0),
        "method": Param((str,), "request method (GET)", rule=_method_rule),
        "body": Param((str,), "request body text (not with HEAD)"),
        "family": FAMILY,
    },
    target=url_target,
    parse=lambda params, timeout: HttpParams.from_params(params),
)
"""What an ``http`` check accepts: ``http(s)://`` URLs, or ``host[:port]`` (fetched over http)."""


REDIRECTS = (301, 302, 303, 307, 308)
"""Statuses followed when ``follow_redirects`` is on (with a ``Location`` header)."""


def _describe(exc: HttpClientError) -> str:
    """Operator-readable text for a failed exchange."""
    if str(exc):
        return str(exc)
    cause: BaseException | None = exc.__cause__
    while isinstance(cause, trio.BrokenResourceError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause.reason or cause}"
    if exc.phase == "connect tcp" and isinstance(cause, OSError):
        return connect_error_text(cause)
    if isinstance(cause, OSError) and cause.errno:
        return f"connection failed during {exc.phase}: {cause.strerror or cause}"
    why = (str(cause) or type(cause).__name__) if cause is not None else "unknown error"
    return f"connection broken during {exc.phase}: {why}"


class _Hop:
    """Where one request goes."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in ("http", "https"):
            raise ProbeError(f"cannot request {url!r}: only http and https URLs")
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


async def http_get(url: str, p: HttpParams, wait: float, family: int | None
                   ) -> tuple[HttpGetResult, str | None]:  # fmt: skip
    """Request ``url`` (following redirects if asked) within ``wait`` seconds.

    Returns:
        The result and the server address of the last request (``None`` if none was made).
    """
    ex = Exchange()
    t0: float | None = None
    server: str | None = None
    error: str | None = None
    redirects = 0
    current = url
    method, body = p.method, p.body
    headers = list(p.headers.items())
    keep = p.max_body_bytes if p.body_regex else 0
    with trio.move_on_after(wait) as scope:
        try:
            while True:
                hop = _Hop(current)
                ex = Exchange(phase="resolve")
                choice: FamilyChoice = "4" if family == 4 else "6" if family == 6 else "auto"
                fam, address, why = (await resolve(hop.host, choice))[0]
                if address is None:
                    raise ProbeError(why or f"cannot resolve {hop.host!r}")
                tls = tls_context(p.verify_tls, p.ca_file) if hop.scheme == "https" else None
                server = address
                await exchange(address, fam, hop.port, tls, hop.host, method, hop.target,
                               headers, body, keep, ex)  # fmt: skip
                if t0 is None:
                    t0 = ex.started
                location = ex.header(b"location")
                if not (p.follow_redirects and ex.status in REDIRECTS and location):
                    break
                if redirects >= p.max_redirects:
                    error = f"too many redirects: more than {p.max_redirects}"
                    break
                redirects += 1
                current = urljoin(current, location.decode("latin-1"))
                if ex.status == 303 or (ex.status in (301, 302) and method == "POST"):
                    method, body = ("HEAD" if method == "HEAD" else "GET"), None
        except HttpClientError as exc:
            error = _describe(exc)
        except ProbeError as exc:
            error = str(exc)
        except (OSError, ssl.SSLError) as exc:  # the CA file
            error = f"cannot load params.ca_file {p.ca_file!r}: {exc}"
    if scope.cancelled_caught:
        error = f"timed out after {wait:g}s during {ex.phase}"
    if t0 is None:
        t0 = ex.started or time.monotonic()

    def since(mark: float | None) -> float | None:
        return (mark - t0) * 1000 if mark is not None and t0 is not None else None

    status = ex.status
    total = since(ex.done) if ex.done is not None else since(time.monotonic())
    success = error is None and status is not None
    if success and status is not None:
        if (status not in p.expect_status) if p.expect_status else not 200 <= status < 400:
            wanted = ", ".join(map(str, p.expect_status)) or "200-399"
            error = f"status {status}, expected {wanted}"
            success = False
        elif p.body_regex and ex.decode_error:
            error = f"body not checked: {ex.decode_error}"
            success = False
        elif p.body_regex and not re.search(p.body_regex.encode(), bytes(ex.body)):
            error = f"body does not match {p.body_regex!r}"
            success = False
    result = HttpGetResult(
        status, total if status is not None else None, ex.size if status is not None else None,
        error, success, url, current, redirects, since(ex.connected), since(ex.first_byte),
        method=p.method,
    )  # fmt: skip
    return result, server
