"""``tls``: the certificate a TLS server presents → :class:`TlsCertResult`.

Params: ``port`` (443, or ``host:port``), ``server_name`` (SNI and the name verified; default the
target host), ``min_days`` (success needs at least this many days to expiry; default 14),
``ca_file`` (extra trust anchors), ``family``.

The handshake first runs with full verification. If verification fails, the reason is kept and
a second handshake without verification fetches the certificate, so an expired or self-signed
certificate is still described (subject, issuer, days to expiry) together with why it failed.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio
from cryptography import x509

from meshmon.probes.base import ParamError, param
from meshmon.probes.params import (
    FAMILY,
    PORT,
    Param,
    ParamSchema,
    host_port_target,
    host_problem,
)
from meshmon.probes.tcp import connect_error_text
from meshmon.results import TlsCertResult


@dataclass(frozen=True)
class TlsParams:
    """Parameters of a ``tls`` check."""

    server_name: str | None = None
    """SNI and verified name; ``None`` uses the target's host (none for an IP literal)."""
    min_days: float = 14.0
    """Warn two weeks ahead: time for a human to renew even over a holiday."""
    ca_file: str | None = None
    """Extra CA bundle (PEM) to trust besides the system's."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TlsParams:
        """Validated parameters."""
        min_days = param(params, "min_days", float, cls.min_days)
        if min_days < 0:
            raise ParamError("params.min_days must be >= 0")
        return cls(param(params, "server_name", str, None), min_days,
                   param(params, "ca_file", str, None))  # fmt: skip


PARAMS = ParamSchema(
    params={
        "port": PORT,
        "family": FAMILY,
        "server_name": Param((str,), "SNI and the name verified (the target's host)",
                             rule=host_problem),
        "min_days": Param((float,), "days to expiry below which the check fails (14)", low=0),
        "ca_file": Param((str,), "extra CA bundle (PEM) to trust"),
    },
    target=host_port_target(lambda params: 443),
    parse=lambda params, timeout: TlsParams.from_params(params),
)
"""What a ``tls`` check accepts: ``host`` or ``host:port`` (default port 443)."""


@dataclass(frozen=True)
class CertInfo:
    """The parts of a certificate the result reports."""

    subject: str
    issuer: str
    not_before: float
    not_after: float
    san: tuple[str, ...]


def describe_cert(der: bytes) -> CertInfo:
    """Parse a DER certificate. Pure."""
    cert = x509.load_der_x509_certificate(der)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = tuple(str(v) for v in ext.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in ext.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        san = ()
    return CertInfo(cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(),
                    san)  # fmt: skip


def _contexts(p: TlsParams) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    strict = ssl.create_default_context()
    if p.ca_file:
        strict.load_verify_locations(p.ca_file)
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    return strict, lax


async def _handshake(address: str, family: int, port: int, ctx: ssl.SSLContext,
                     server_name: str | None) -> tuple[bytes | None, str | None]:  # fmt: skip
    """Connect and handshake; (DER certificate, TLS version). Raises on failure."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = trio.socket.socket(af, socket.SOCK_STREAM)
    try:
        await sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    stream = trio.SSLStream(trio.SocketStream(sock), ctx, server_hostname=server_name)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        version = stream.version()
        return der, version
    finally:
        await trio.aclose_forcefully(stream)


async def tls_check(address: str, family: int, port: int, host: str, p: TlsParams, wait: float,
                    now: float) -> TlsCertResult:  # fmt: skip
    """Check the certificate at ``address:port``; ``now`` (wall clock) dates the expiry."""
    server_name = p.server_name or (None if _is_ip(host) else host)
    strict, lax = _contexts(p)
    verified, verify_error, error = False, None, None
    der: bytes | None = None
    version: str | None = None
    t0 = time.monotonic()
    handshake_ms: float | None = None
    with trio.move_on_after(wait) as scope:
        try:
            der, version = await _handshake(address, family, port, strict, server_name)
            verified = True
            handshake_ms = (time.monotonic() - t0) * 1000
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                verify_error = cause.verify_message or str(cause)
                if cause.verify_code == 62 or "hostname" in verify_error.lower():
                    verify_error = f"{verify_error} (checked name {server_name!r})"
            else:
                error = f"TLS handshake failed: {cause or exc}"
        except OSError as exc:
            error = connect_error_text(exc)
        if verify_error is not None:
            try:
                t1 = time.monotonic()
                der, version = await _handshake(address, family, port, lax, server_name)
                handshake_ms = (time.monotonic() - t1) * 1000
            except (trio.BrokenResourceError, OSError) as exc:
                error = f"TLS handshake failed even without verification: {exc.__cause__ or exc}"
    if scope.cancelled_caught:
        error = f"timed out after {wait:g}s (connected but no TLS handshake, or no answer)"
    info = describe_cert(der) if der else None
    days = (info.not_after - now) / 86400 if info else None
    return TlsCertResult(
        handshake_ok=der is not None, verified=verified and der is not None,
        verify_error=verify_error, subject=info.subject if info else None,
        issuer=info.issuer if info else None, not_before=info.not_before if info else None,
        not_after=info.not_after if info else None, days_to_expiry=days,
        handshake_time_ms=handshake_ms, error=error, resolved_ip=address,
        san=info.san if info else (), tls_version=version, min_days=p.min_days,
    )  # fmt: skip


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


