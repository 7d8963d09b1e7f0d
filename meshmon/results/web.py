"""The ``http`` and ``tls`` payloads: a request and its validation, a server certificate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpGetResult:
    """An HTTP request (GET unless ``method`` says otherwise) and its validation."""

    status_code: int | None
    response_time_ms_: float | None
    """Time to the complete response (named with ``_`` so it does not shadow the method)."""
    response_size_bytes: int | None
    error: str | None
    success: bool
    url: str = ""
    final_url: str = ""
    redirects: int = 0
    connect_time_ms: float | None = None
    """Time until the connection (TCP, and TLS for https) was established."""
    first_byte_ms: float | None = None
    """Time until the response headers arrived."""
    method: str = "GET"
    """Request method."""

    def is_successful(self) -> bool:
        """Status and body matched the expectations."""
        return self.success

    def response_time_ms(self) -> float | None:
        """Time to the complete response."""
        return self.response_time_ms_

    def error_message(self) -> str | None:
        """Transport error or the failed validation."""
        return self.error


@dataclass(frozen=True)
class TlsCertResult:
    """The certificate a TLS server presented (meshmon's addition to the specification).

    The certificate is read even when verification fails; ``verified`` and
    ``verify_error`` say whether and why not.
    """

    handshake_ok: bool
    """A TLS handshake completed (with or without verification)."""
    verified: bool
    verify_error: str | None
    subject: str | None
    issuer: str | None
    not_before: float | None
    """Unix seconds."""
    not_after: float | None
    days_to_expiry: float | None
    """Days from the probe's start to ``not_after`` (negative once expired)."""
    handshake_time_ms: float | None
    error: str | None
    resolved_ip: str | None
    san: tuple[str, ...] = ()
    tls_version: str | None = None
    min_days: float = 0.0
    """The check's warning threshold: success needs ``days_to_expiry >= min_days``."""

    def is_successful(self) -> bool:
        """Verified, and not expiring within ``min_days``."""
        return (
            self.handshake_ok
            and self.verified
            and self.days_to_expiry is not None
            and self.days_to_expiry >= self.min_days
        )

    def response_time_ms(self) -> float | None:
        """Time to handshake completion."""
        return self.handshake_time_ms

    def error_message(self) -> str | None:
        """Transport error, verification failure, or an expiry warning."""
        if self.error:
            return self.error
        if not self.verified:
            return f"certificate not verified: {self.verify_error}"
        if self.days_to_expiry is not None and self.days_to_expiry < self.min_days:
            return f"certificate expires in {self.days_to_expiry:.1f} days (< {self.min_days})"
        return None
