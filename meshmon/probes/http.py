"""``http``: an HTTP GET with httpx (on trio through anyio) → :class:`HttpGetResult`.

Params: ``expect_status`` (an int or a list; default: any 2xx or 3xx), ``body_regex`` (searched in
the first ``max_body_bytes`` of the body), ``follow_redirects`` (default false: a monitor should
see the redirect itself), ``max_redirects`` (5), ``verify_tls`` (true), ``ca_file`` (extra trust
anchors, e.g. a private CA), ``headers`` (a table), ``max_body_bytes`` (1 MiB), ``family``
(forces the client's local address family).

Timings come from httpcore's trace hooks: connection established (TCP+TLS), response headers
(first byte), and complete response.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from meshmon.probes.base import ParamError, param
from meshmon.probes.params import FAMILY, Param, ParamSchema, regex_rule, url_target
from meshmon.probes.tcp import connect_error_text
from meshmon.results import HttpGetResult


@dataclass(frozen=True)
class HttpParams:
    """Parameters of an ``http`` check."""

    expect_status: tuple[int, ...] = ()
    """Accepted status codes; empty accepts 200-399."""
    body_regex: str | None = None
    """A regex the body must contain; ``None`` does not look at the body."""
    follow_redirects: bool = False
    """Off by default: a redirect is an answer worth seeing, not hiding."""
    max_redirects: int = 5
    """When following, give up after this many (httpx's default is 20; 5 is plenty)."""
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
        return cls(
            tuple(statuses), body,
            param(params, "follow_redirects", bool, cls.follow_redirects),
            param(params, "max_redirects", int, cls.max_redirects),
            param(params, "verify_tls", bool, cls.verify_tls),
            param(params, "ca_file", str, None),
            {str(k): str(v) for k, v in headers.items()},
            param(params, "max_body_bytes", int, cls.max_body_bytes),
        )  # fmt: skip


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
        "family": FAMILY,
    },
    target=url_target,
    parse=lambda params, timeout: HttpParams.from_params(params),
)
"""What an ``http`` check accepts: ``http(s)://`` URLs, or ``host[:port]`` (fetched over http)."""


def _verify(p: HttpParams) -> ssl.SSLContext | bool:
    if not p.verify_tls:
        return False
    ctx = ssl.create_default_context()
    if p.ca_file:
        ctx.load_verify_locations(p.ca_file)
    return ctx


def _root_oserror(exc: BaseException) -> OSError | None:
    """The first OSError with an errno in the cause/context chain or exception groups."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return None


def _describe(exc: Exception, phase: str) -> str:
    text = str(exc) or type(exc).__name__
    root = _root_oserror(exc)
    if isinstance(root, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {root.verify_message}"
    if isinstance(root, ssl.SSLError):
        return f"TLS error: {root.reason or root}"
    if isinstance(exc, httpx.ConnectError) and root is not None and not isinstance(
        root, socket.gaierror
    ):
        return connect_error_text(root)
    if isinstance(exc, httpx.ConnectError):
        if "Name or service not known" in text or "nodename nor servname" in text or (
            "Temporary failure in name resolution" in text
        ):
            return f"cannot resolve the host name: {text}"
        if "refused" in text.lower():
            return f"connection refused: {text}"
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
            return f"TLS certificate not trusted: {text}"
        return f"connect failed: {text}"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"too many redirects: {text}"
    return f"{type(exc).__name__} during {phase}: {text}"


async def http_get(url: str, p: HttpParams, wait: float, family: int | None
                   ) -> tuple[HttpGetResult, str | None]:  # fmt: skip
    """GET ``url``; returns the result and the server address actually used (if known)."""
    marks: dict[str, float] = {}
    t0 = time.monotonic()
    phase = "connect"

    async def trace(name: str, info: Mapping[str, Any]) -> None:
        nonlocal phase
        if name.endswith(".complete"):
            marks[name.rsplit(".", 1)[0].split(".", 1)[-1]] = time.monotonic()
        if name.endswith(".started") and "close" not in name:
            phase = name.rsplit(".", 1)[0].split(".", 1)[-1].replace("_", " ")

    local = {4: "0.0.0.0", 6: "::"}.get(family or 0)
    transport = httpx.AsyncHTTPTransport(verify=_verify(p), local_address=local, retries=0)
    status = size = None
    redirects = 0
    final_url = url
    server: str | None = None
    error: str | None = None
    body = bytearray()
    async with httpx.AsyncClient(transport=transport, follow_redirects=p.follow_redirects,
                                 max_redirects=p.max_redirects, headers=p.headers,
                                 timeout=None) as client:  # fmt: skip
        with trio.move_on_after(wait) as scope:
            try:
                async with client.stream("GET", url, extensions={"trace": trace}) as resp:
                    status = resp.status_code
                    redirects = len(resp.history)
                    final_url = str(resp.url)
                    stream = resp.extensions.get("network_stream")
                    if stream is not None:
                        addr = stream.get_extra_info("server_addr")
                        server = str(addr[0]) if addr else None
                    phase = "reading the body"
                    size = 0
                    async for chunk in resp.aiter_raw():
                        size += len(chunk)
                        if len(body) < p.max_body_bytes:
                            body += chunk[: p.max_body_bytes - len(body)]
            except httpx.HTTPError as exc:
                error = _describe(exc, phase)
            except ssl.SSLError as exc:
                error = f"TLS error: {exc}"
        if scope.cancelled_caught:
            error = f"timed out after {wait:g}s during {phase}"
    total = (time.monotonic() - t0) * 1000

    def at(*names: str) -> float | None:
        times = [marks[n] for n in names if n in marks]
        return (max(times) - t0) * 1000 if times else None

    connect = at("connect_tcp", "start_tls")
    first = at("receive_response_headers")
    success = error is None and status is not None
    if success and status is not None:
        if (status not in p.expect_status) if p.expect_status else not 200 <= status < 400:
            wanted = ", ".join(map(str, p.expect_status)) or "200-399"
            error = f"status {status}, expected {wanted}"
            success = False
        elif p.body_regex and not re.search(p.body_regex.encode(), bytes(body)):
            error = f"body does not match {p.body_regex!r}"
            success = False
    result = HttpGetResult(status, total if status is not None else None, size, error, success,
                           url, final_url, redirects, connect, first)  # fmt: skip
    return result, server
