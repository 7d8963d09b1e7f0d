"""Reading an aggregator's query API (JSON over HTTPS): for the history archive and the TUI.

Theory of operation
-------------------
A reader trusts exactly the mesh CA and accepts a server only if its certificate carries the
tag ``aggregator``, checked right after the TLS handshake and before a byte of the request (or
of a bearer token) is sent, as the uploader does (:func:`meshmon.sync.client.only_aggregators`).
An agent reads with its own mesh certificate (:func:`meshmon.sync.client.aggregator_context`:
the aggregator grants it the ``read`` scope); an operator's tool with :func:`reader_context`: a
bearer token, a mesh certificate, or both. Host names are not checked, as for every mesh
connection: the CA and the tag are the identity.

:class:`AggregatorReader` keeps connections to one aggregator alive between requests and works
under trio and asyncio alike (httpx over anyio); answers are decoded in a worker thread, so a
big one does not stall the caller's event loop. Every failure is a :class:`ReadError` whose
``reason`` is one of the words mesh queries use for an agent that did not answer:

``unreachable``  no connection, or it broke before the answer was complete
``refused``      the server is not this mesh's aggregator (CA, tag or revocation), refused this
                 client's certificate in TLS, or answered 401/403
``timeout``      no answer within the reader's timeout
``error``        any other error answer (``status`` says which; 404: an aggregator without this
                 route), or one that is not JSON
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
from cryptography import x509

from meshmon import pki
from meshmon.sync.client import (
    AGGREGATOR_TAG,
    NotAnAggregator,
    aggregator_problem,
    failure_cause,
    only_aggregators,
    peer_name,
)
from meshmon.wire import urls

TIMEOUT = 10.0
"""Seconds for one request: a query over a few hours of raw results takes well under one; a
caller with a deadline of its own (the archive) cancels sooner."""

UNREACHABLE, REFUSED, TIMEOUT_REASON, ERROR = "unreachable", "refused", "timeout", "error"


class ReadError(Exception):
    """The aggregator did not answer the question; the message names it and what happened."""

    def __init__(self, reason: str, message: str, status: int | None = None) -> None:
        self.reason = reason
        self.status = status
        super().__init__(message)


class ReaderSetupError(ValueError):
    """A reader cannot be built (a bad URL or an unusable CA, certificate or key file)."""


def _tag_problem(der: bytes | None) -> tuple[str | None, str]:
    """Without a CRL: the chain is TLS's to check; the tag is checked here."""
    if not der:
        return "the server presented no certificate", ""
    cert = x509.load_der_x509_certificate(der)
    name = pki.node_name_of(cert)
    if AGGREGATOR_TAG not in pki.tags_of(cert):
        return (f"the server's certificate is for {name!r}, a mesh member without the tag "
                f"{AGGREGATOR_TAG!r}: not an aggregator; nothing was sent"), name  # fmt: skip
    return None, name


def reader_context(ca: Path, *, cert: Path | None = None, key: Path | None = None,
                   crl: Path | None = None) -> ssl.SSLContext:  # fmt: skip
    """A client context that trusts the mesh CA in ``ca``, presents ``cert``/``key`` if given,
    and accepts only aggregators (checked against ``crl`` too, when it exists).

    Raises:
        ReaderSetupError: a file is missing or unusable (named in the message).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # mesh certificates name nodes; the CA and the tag are checked
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise ReaderSetupError(f"{ca}: CA certificate not found (the mesh CA's ca.crt)") from None
    except (OSError, ssl.SSLError) as exc:
        raise ReaderSetupError(f"{ca}: not a PEM CA certificate ({exc})") from None
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ReaderSetupError(f"{cert}: cannot use this certificate and key "
                                   f"({exc})") from None  # fmt: skip
    if crl is not None and crl.exists():
        try:
            trust = pki.Trust.from_files(ca, crl)
        except pki.PkiError as exc:
            raise ReaderSetupError(str(exc)) from None
        return only_aggregators(ctx, lambda der: aggregator_problem(trust, der))
    return only_aggregators(ctx, _tag_problem)


def check_url(url: str) -> str:
    """``url`` normalised (``https://HOST:PORT[/PREFIX]``).

    Raises:
        ReaderSetupError: it is not an aggregator URL (the message says why).
    """
    problem = urls.url_problem(url)
    if problem:
        raise ReaderSetupError(f"aggregator URL: {problem}")
    return urls.normalize(url)


def _refused_in_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NotAnAggregator | ssl.SSLError):
            return True
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]
            continue
        seen = seen.__cause__ or seen.__context__
    return False


class AggregatorReader:
    """GETs JSON from one aggregator's query API.

    Args:
        url: ``https://HOST:PORT[/PREFIX]`` (checked with :func:`check_url`).
        context: from :func:`reader_context` or :func:`~meshmon.sync.client.aggregator_context`.
        token: a bearer token (None: the context's certificate authenticates).
        timeout: seconds for one request.
    """

    def __init__(self, url: str, context: ssl.SSLContext, token: str | None = None,
                 timeout: float = TIMEOUT) -> None:  # fmt: skip
        self.url = check_url(url)
        self.timeout = timeout
        self.aggregator = ""
        """The node name in the aggregator's certificate, once a request got an answer."""
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.url, verify=context, headers=headers, trust_env=False,
            follow_redirects=False, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        )  # fmt: skip

    async def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` (e.g. ``/v1/results``) with ``params`` (None values left out); the
        decoded JSON.

        Raises:
            ReadError: see the module docstring.
        """
        query = {k: v for k, v in params.items() if v is not None}
        where = f"{self.url}{path}"
        try:
            response = await self._http.get(path, params=query)
        except httpx.TimeoutException:
            raise ReadError(TIMEOUT_REASON, f"{where}: no answer within "
                            f"{self.timeout:g}s") from None  # fmt: skip
        except httpx.ConnectError as exc:
            reason = REFUSED if _refused_in_tls(exc) else UNREACHABLE
            raise ReadError(reason, f"{self.url}: cannot connect: {failure_cause(exc)}") from None
        except httpx.HTTPError as exc:
            raise ReadError(UNREACHABLE, f"{where}: connection lost: "
                            f"{failure_cause(exc)}") from None  # fmt: skip
        self.aggregator = peer_name(response) or self.aggregator
        try:
            body = await anyio.to_thread.run_sync(json.loads, response.content)
        except ValueError:
            body = None
        status = response.status_code
        if status == 200 and body is not None:
            return body
        message = (body.get("error") or body.get("database")) if isinstance(body, dict) \
            else None  # fmt: skip
        if status == 200:
            raise ReadError(ERROR, f"{where}: the answer is not JSON", status)
        reason = REFUSED if status in (401, 403) else ERROR
        raise ReadError(reason, f"{where}: {status} {message or response.reason_phrase}", status)

    async def aclose(self) -> None:
        """Close every connection."""
        await self._http.aclose()
