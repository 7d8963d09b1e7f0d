"""HTTPS to an aggregator over the mesh's mutual TLS, and what its answers mean.

Theory of operation
-------------------
The agent presents its own mesh certificate (its identity at the aggregator) and accepts a
server only if the server's certificate chains to the mesh CA and is unexpired (checked inside
TLS by :func:`meshmon.pki.client_context`), is not on the newest CRL this agent knows, and
carries the tag ``aggregator``, which only the CA grants. A plain member of the mesh holds a
valid mesh certificate too, so the tag is what keeps one from posing as the aggregator.

The tag is checked right after the handshake and before a byte of the request is sent: the
context's ``sslobject_class`` is a subclass of :class:`ssl.SSLObject` whose ``do_handshake``
verifies the peer certificate once the handshake completes and raises an :class:`ssl.SSLError`
otherwise, which trio turns into a broken stream and httpx into a connect error. That works with
any event loop that drives TLS through ``SSLContext.wrap_bio`` (trio and anyio do).

Host names are not checked against the certificate (as for every mesh connection, the
certificate's identity is what counts, not the address used to reach it): any server holding
an unrevoked ``aggregator`` certificate of this mesh is an aggregator of this mesh, whether it
is reached by IP, by a DNS name, behind a port forward or a Kubernetes service. The name in its
certificate is reported in ``meshmon status``.

Answers map to four outcomes (:class:`Acked`, :class:`Conflict`, :class:`Refused`,
:class:`Unavailable`); every failure carries a message that names the problem for the log.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from meshmon import pki
from meshmon.wire.ingest import CONTENT_TYPE, Ack, BatchError, decode_ack

AGGREGATOR_TAG = "aggregator"
"""The certificate tag that makes a mesh node an aggregator."""


class NotAnAggregator(ssl.SSLError):
    """The server's certificate is not an unrevoked mesh certificate tagged ``aggregator``."""


def aggregator_problem(trust: pki.Trust, der: bytes | None) -> tuple[str | None, str]:
    """Check a server certificate (DER); return (the problem or ``None``, the node name)."""
    if not der:
        return "the server presented no certificate", ""
    try:
        peer = trust.verify(der)
    except pki.CertificateError as exc:
        return f"the server's certificate is refused: {exc}", ""
    if AGGREGATOR_TAG not in peer.tags:
        return (f"the server's certificate is for {peer.name!r}, a mesh member without the tag "
                f"{AGGREGATOR_TAG!r}: not an aggregator (the aggregator needs a certificate "
                f"issued with the tag {AGGREGATOR_TAG!r})"), peer.name  # fmt: skip
    return None, peer.name


def aggregator_context(identity: pki.NodeIdentity, trust: pki.Trust) -> ssl.SSLContext:
    """A client context that presents this node's certificate and accepts only aggregators.

    ``trust`` is consulted at every handshake, so a CRL adopted later is honoured.
    """
    ctx = pki.client_context(identity, trust)

    class _AggregatorOnly(ssl.SSLObject):
        aggregator = ""

        def do_handshake(self) -> None:
            super().do_handshake()
            problem, name = aggregator_problem(trust, self.getpeercert(binary_form=True))
            if problem:
                raise NotAnAggregator(problem)
            self.aggregator = name

    ctx.sslobject_class = _AggregatorOnly
    return ctx


@dataclass(frozen=True)
class Acked:
    """200: the aggregator committed everything up to ``ack.high_water``."""

    ack: Ack
    aggregator: str
    """The node name in the aggregator's certificate."""


@dataclass(frozen=True)
class Conflict:
    """409 with ``expected``: the aggregator holds everything below ``expected``, nothing more."""

    expected: int
    message: str


@dataclass(frozen=True)
class Refused:
    """Another 4xx: the aggregator refuses the batch (or this agent); retrying the same will
    not help until someone fixes what ``message`` names."""

    status: int
    message: str


@dataclass(frozen=True)
class Unavailable:
    """No usable answer: connection refused or lost, TLS refused, timeout, 5xx, garbage."""

    message: str


Outcome = Acked | Conflict | Refused | Unavailable


def _error_text(response: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The ``error`` of a JSON error body (and the body), else the start of the text."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return str(body.get("error") or body)[:300], body
    text = response.content[:200].decode("utf-8", errors="replace").strip()
    return text or response.reason_phrase or "no explanation", {}


def _cause(exc: BaseException) -> str:
    """What went wrong under an httpx transport error, for the log."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NotAnAggregator):
            return str(seen.args[0]) if seen.args else "not an aggregator"
        if isinstance(seen, ssl.SSLCertVerificationError):
            text = str(seen.verify_message)
            if "issuer" in text or "self-signed" in text:
                text += " (the server's certificate was not issued by this mesh's CA)"
            return f"the server's certificate is refused: {text}"
        if isinstance(seen, ssl.SSLError):
            reason = str(seen.reason or seen).replace("_", " ").lower()
            return f"TLS failed: {reason}" + (
                " (the aggregator refused this agent's certificate: not issued by its mesh CA, "
                "or revoked?)" if "alert" in reason else "")  # fmt: skip
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:  # one per address tried
            seen = seen.exceptions[0]
            continue
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class AggregatorClient:
    """POSTs batches to aggregators; one keep-alive connection per aggregator at a time."""

    def __init__(self, identity: pki.NodeIdentity, trust: pki.Trust, timeout: float) -> None:
        self.identity = identity
        self.trust = trust
        self.timeout = timeout
        self._http, self._crl_number = self._client()

    def _client(self) -> tuple[httpx.AsyncClient, int]:
        http = httpx.AsyncClient(
            verify=aggregator_context(self.identity, self.trust), trust_env=False,
            follow_redirects=False, timeout=httpx.Timeout(self.timeout,
                                                          connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
        )  # fmt: skip
        return http, self.trust.crl_number

    async def post(self, url: str, body: bytes, encoding: str | None) -> Outcome:
        """Send one encoded batch to ``url`` (the ingest URL) and classify the answer."""
        if self.trust.crl_number != self._crl_number:  # a newer CRL: verify servers afresh
            await self._http.aclose()
            self._http, self._crl_number = self._client()
        headers = {"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE}
        if encoding:
            headers["Content-Encoding"] = encoding
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            return Unavailable(f"no answer within {self.timeout:g}s")
        except httpx.ConnectError as exc:
            return Unavailable(f"cannot connect: {_cause(exc)}")
        except httpx.HTTPError as exc:  # the connection broke mid-request, or a protocol error
            return Unavailable(f"connection lost: {_cause(exc)}")
        status = response.status_code
        if status == 200:
            try:
                return Acked(decode_ack(response.content), _peer_name(response))
            except BatchError as exc:
                return Unavailable(f"the answer is not an acknowledgement: {exc}")
        message, data = _error_text(response)
        if status == 409:
            expected = data.get("expected")
            if type(expected) is int and expected >= 1:
                return Conflict(expected, message)
        if 400 <= status < 500:
            return Refused(status, message)
        return Unavailable(f"HTTP {status}: {message}")

    async def aclose(self) -> None:
        """Close every connection."""
        await self._http.aclose()


def _peer_name(response: httpx.Response) -> str:
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    return str(getattr(ssl_object, "aggregator", ""))
