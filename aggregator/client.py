"""A small synchronous client of the aggregator's query API, for the CLI.

Theory of operation
-------------------
The aggregator's certificate is a mesh certificate, so the client trusts exactly the mesh CA
(``ca``), not the system's roots. Any member's certificate chains to that CA, and a reader's
bearer token must not go to a member posing as the aggregator: after the TLS handshake and
*before* sending the request, the client checks that the server's certificate carries the tag
``aggregator`` (and, when a CRL is given, that it is not revoked). Host names are not checked
(mesh certificates name nodes, not DNS names); the tag and the CA are the identity.

The client authenticates with a bearer token, a mesh client certificate (an agent's or the
aggregator's own identity: read scope), or both. Every failure is a :class:`ClientError` whose
message is one line an operator can act on.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509

from meshmon import pki

DEFAULT_PORT = 7947
AGGREGATOR_TAG = "aggregator"


class ClientError(Exception):
    """The aggregator could not be asked or refused; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


def parse_url(url: str) -> tuple[str, int]:
    """``https://host:port``, ``host:port`` or ``host`` → (host, port).

    Raises:
        ClientError: not an https URL or a bad port.
    """
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ClientError(f"aggregator URL {url!r}: {exc}") from None
    if parts.scheme != "https":
        raise ClientError(f"aggregator URL {url!r}: the aggregator speaks https only")
    if not parts.hostname:
        raise ClientError(f"aggregator URL {url!r} has no host")
    if parts.path not in ("", "/"):
        raise ClientError(f"aggregator URL {url!r}: give only https://HOST:PORT (no path)")
    return parts.hostname, port


class AggregatorClient:
    """Requests to one aggregator over TLS, authenticated by token and/or certificate."""

    def __init__(self, url: str, *, ca: Path, token: str | None = None,
                 cert: Path | None = None, key: Path | None = None, crl: Path | None = None,
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.host, self.port = parse_url(url)
        self.url = f"https://{self.host}:{self.port}"
        self.token = token
        self.timeout = timeout
        self.trust: pki.Trust | None = None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # mesh certificates name nodes; the tag is checked instead
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except FileNotFoundError:
            raise ClientError(f"{ca}: CA certificate not found (the mesh CA's ca.crt)") from None
        except ssl.SSLError as exc:
            raise ClientError(f"{ca}: not a PEM CA certificate ({exc.reason})") from None
        if cert is not None and key is not None:
            try:
                ctx.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise ClientError(f"{cert}: cannot use this certificate and key ({exc})") from None
        if crl is not None and crl.exists():
            try:
                self.trust = pki.Trust.from_files(ca, crl)
            except pki.PkiError as exc:
                raise ClientError(str(exc)) from None
        self.context = ctx

    def _connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context,
                                           timeout=self.timeout)  # fmt: skip
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise ClientError(f"{self.url}: its certificate is not from this mesh's CA "
                              f"({exc.verify_message}); check --ca") from None  # fmt: skip
        except ssl.SSLError as exc:
            raise ClientError(f"{self.url}: TLS failed ({exc.reason or exc}); if the server "
                              "refused this client's certificate, check that it is from the "
                              "mesh CA and not revoked") from None  # fmt: skip
        except TimeoutError:
            raise ClientError(f"{self.url}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise ClientError(f"{self.url}: cannot connect ({exc.strerror or exc}); is the "
                              "aggregator running there?") from None  # fmt: skip
        self._check_server(conn)
        return conn

    def _check_server(self, conn: http.client.HTTPSConnection) -> None:
        sock = conn.sock
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if not der:
            conn.close()
            raise ClientError(f"{self.url}: the server sent no certificate")
        cert = x509.load_der_x509_certificate(der)
        name = pki.node_name_of(cert)
        if self.trust is not None:
            try:
                tags = self.trust.verify(cert).tags
            except pki.CertificateError as exc:
                conn.close()
                raise ClientError(f"{self.url}: {exc}") from None
        else:
            tags = pki.tags_of(cert)
        if AGGREGATOR_TAG not in tags:
            conn.close()
            raise ClientError(f"{self.url}: {name!r} is a mesh member but not an aggregator (its "
                              f"certificate lacks the tag {AGGREGATOR_TAG!r}); nothing was sent")

    def request(self, method: str, path: str, params: dict[str, Any] | None = None,
                body: Any = None) -> Any:  # fmt: skip
        """Send one request and return the decoded JSON answer (None for 204).

        Raises:
            ClientError: the connection failed or the server answered an error; the message
                is the server's ``error``.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connect()
        try:
            conn.request(method, target, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"{self.url}: the request failed ({exc})") from None
        finally:
            conn.close()
        if response.status == 204:
            return None
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = None
        if response.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise ClientError(f"{self.url}: {response.status} "
                              f"{message or response.reason}", response.status)  # fmt: skip
        return decoded

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params`` (None values left out)."""
        return self.request("GET", path, params)
