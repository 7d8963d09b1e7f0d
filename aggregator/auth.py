"""Who is asking: bearer tokens for readers, mesh certificates for agents (and readers).

Theory of operation
-------------------
There is no anonymous access to data. A request is authenticated by, in this order:

1. its TLS client certificate, when one was presented. TLS has already checked that it chains
   to the mesh CA (the server asks for certificates but does not require them, so that token
   readers without one can connect); here it must also pass :meth:`meshmon.pki.Trust.verify`
   against the newest CRL, which :class:`CrlWatch` reloads whenever the file changes. A revoked
   certificate is refused outright (403), whatever else the request carries. A valid one names
   the node (``urn:meshmon:node:`` SAN) and grants the ``read`` scope, and it is the only
   credential ``POST /v1/ingest`` accepts;
2. an ``Authorization: Bearer`` token. Tokens look like ``mmt_<id>_<secret>`` (the secret is 32
   random bytes, base64url); the database keeps only the SHA-256 of the whole token, found by
   ``id`` and compared in constant time. Scopes are ``read`` and ``admin`` (admin can also read
   and manage tokens). A revoked token is a deleted row. Lookups are cached for
   ``token_ttl`` seconds, so a token revoked by another process stops working within that
   time (at once when revoked through this process's API).

A token overrides a certificate's read scope when both are given (an admin on a mesh host).
Failures are :class:`AuthError` with the HTTP status and a message that says how to get in.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from meshmon import pki
from meshmon.config import check_name

log = logging.getLogger(__name__)

Scope = Literal["read", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "admin")

TOKEN_PREFIX = "mmt_"
_TOKEN_RE = re.compile(r"^mmt_([0-9]{1,18})_([A-Za-z0-9_-]{43})$")

HOW_TO_AUTHENTICATE = (
    "send 'Authorization: Bearer TOKEN' (an operator creates one with: meshmon aggregator token "
    "create NAME --scope read) or connect with a mesh client certificate"
)


class AuthError(Exception):
    """A request is not allowed; ``status`` is 401 (who are you?) or 403 (not you / not this)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class TokenError(ValueError):
    """A token management request is wrong (bad name or scope, duplicate, unknown)."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    kind: Literal["token", "certificate"]
    name: str
    """The token's name, or the node name in the certificate."""
    scope: Scope
    peer: pki.PeerIdentity | None = None
    """The verified client certificate, when one was presented."""

    def allows(self, scope: Scope) -> bool:
        """True if this caller may do what ``scope`` covers (admin covers read)."""
        return self.scope == "admin" or scope == "read"


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed (never the secret)."""

    id: int
    name: str
    scope: Scope
    created_at: dt.datetime | None
    last_used: dt.datetime | None


# --- tokens in the database (sync functions for :class:`aggregator.dbpool.Pool`) --------------


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex of the whole string."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(conn: Any, name: str, scope: str) -> tuple[str, TokenInfo]:
    """Store a new token; the secret is returned once and never stored.

    Raises:
        TokenError: the name is not valid or already used, or the scope is unknown.
    """
    try:
        check_name(name, "token name")
    except ValueError as exc:
        raise TokenError(str(exc)) from None
    if scope not in SCOPES:
        raise TokenError(f"scope {scope!r} is not one of: {', '.join(SCOPES)}")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    with conn.transaction():
        if conn.execute("SELECT 1 FROM api_tokens WHERE name = %s", (name,)).fetchone():
            raise TokenError(f"a token named {name!r} exists; revoke it first or pick another "
                             "name")  # fmt: skip
        row = conn.execute(
            "INSERT INTO api_tokens (name, hash, scope, created_at) VALUES (%s, '', %s, now()) "
            "RETURNING id, created_at", (name, scope)).fetchone()  # fmt: skip
        token = f"{TOKEN_PREFIX}{row[0]}_{secret}"
        conn.execute("UPDATE api_tokens SET hash = %s WHERE id = %s", (hash_token(token), row[0]))
    return token, TokenInfo(row[0], name, scope, row[1], None)


def list_tokens(conn: Any) -> list[TokenInfo]:
    """Every token, oldest first."""
    rows = conn.execute(
        "SELECT id, name, scope, created_at, last_used FROM api_tokens ORDER BY id").fetchall()
    return [TokenInfo(*row) for row in rows]


def revoke_token(conn: Any, name: str) -> bool:
    """Delete the token called ``name``; False if there was none."""
    cur = conn.execute("DELETE FROM api_tokens WHERE name = %s", (name,))
    return bool(cur.rowcount)


def _lookup(conn: Any, token_id: int) -> tuple[str, str, str] | None:
    row = conn.execute("SELECT name, hash, scope FROM api_tokens WHERE id = %s",
                       (token_id,)).fetchone()  # fmt: skip
    return None if row is None else (row[0], row[1], row[2])


def _touch(conn: Any, token_id: int) -> None:
    conn.execute("UPDATE api_tokens SET last_used = now() WHERE id = %s", (token_id,))


# --- certificates -----------------------------------------------------------------------------


class CrlWatch:
    """The mesh :class:`~meshmon.pki.Trust`, its CRL re-read whenever the file changes.

    The file is looked at (one ``stat``) at most every ``interval`` seconds, when a certificate
    is checked; a newer CRL signed by the CA replaces the current one, anything else is logged
    and ignored (the current list stays).
    """

    def __init__(self, trust: pki.Trust, crl_path: Path, interval: float = 1.0) -> None:
        self._trust = trust
        self.crl_path = crl_path
        self.interval = interval
        self._checked = time.monotonic()
        self._mtime = self._stat()

    def _stat(self) -> float | None:
        try:
            return self.crl_path.stat().st_mtime
        except OSError:
            return None

    @property
    def trust(self) -> pki.Trust:
        """The trust, with the CRL file re-read if it changed."""
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            mtime = self._stat()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                self._reload()
        return self._trust

    def _reload(self) -> None:
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
            if self._trust.update_crl(crl):
                log.info("CRL %s reloaded: number %d, %d revoked", self.crl_path,
                         self._trust.crl_number, len(list(crl)))  # fmt: skip
        except (OSError, ValueError, pki.PkiError) as exc:
            log.warning("CRL %s changed but cannot be used (%s); keeping CRL number %d",
                        self.crl_path, exc, self._trust.crl_number)  # fmt: skip


# --- the authenticator ------------------------------------------------------------------------

_CACHE_MAX = 4096
"""Verified certificates and token lookups kept; the cache is simply emptied when full."""


class Authenticator:
    """Turns a request's client certificate and ``Authorization`` header into a principal."""

    def __init__(self, pool: Any, crl: CrlWatch, token_ttl: float = 5.0) -> None:
        self.pool = pool
        """An :class:`aggregator.dbpool.Pool` (or anything with its ``run``)."""
        self.crl = crl
        self.token_ttl = token_ttl
        self._certs: dict[bytes, tuple[int, pki.PeerIdentity]] = {}
        self._tokens: dict[str, tuple[float, Principal | None]] = {}
        self._touched: dict[int, float] = {}

    def certificate(self, der: bytes) -> pki.PeerIdentity:
        """Verify a client certificate (DER) against the CA, its validity and the newest CRL.

        Raises:
            AuthError: 403 naming the reason.
        """
        trust = self.crl.trust
        cached = self._certs.get(der)
        if cached is not None and cached[0] == trust.crl_number:
            peer = cached[1]
            if dt.datetime.now(dt.UTC) <= peer.not_after:
                return peer
        try:
            peer = trust.verify(der)
        except pki.CertificateError as exc:
            raise AuthError(403, f"client certificate refused: {exc}") from None
        if len(self._certs) >= _CACHE_MAX:
            self._certs.clear()
        self._certs[der] = (trust.crl_number, peer)
        return peer

    async def authenticate(self, authorization: str | None, peer_der: bytes | None) -> Principal:
        """The caller, from its certificate and/or its bearer token.

        Raises:
            AuthError: 401 when neither is given or the token is unknown, 403 when the
                certificate is refused.
            DatabaseUnavailable: the token could not be looked up.
        """
        peer = self.certificate(peer_der) if peer_der else None
        if authorization:
            principal = await self.token(authorization)
            return dataclasses.replace(principal, peer=peer)
        if peer is not None:
            return Principal("certificate", peer.name, "read", peer)
        raise AuthError(401, f"authentication required: {HOW_TO_AUTHENTICATE}")

    async def token(self, authorization: str) -> Principal:
        """Check an ``Authorization`` header's bearer token.

        Raises:
            AuthError: 401 naming what is wrong.
        """
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, f"Authorization: expected 'Bearer TOKEN'; {HOW_TO_AUTHENTICATE}")
        match = _TOKEN_RE.match(token)
        if match is None:
            raise AuthError(401, "bearer token: not a meshmon token (mmt_<id>_<secret>)")
        now = time.monotonic()
        cached = self._tokens.get(token)
        if cached is not None and now - cached[0] < self.token_ttl:
            principal = cached[1]
        else:
            token_id = int(match.group(1))
            row = await self.pool.run(_lookup, token_id)
            principal = None
            if row is not None and hmac.compare_digest(row[1], hash_token(token)):
                principal = Principal("token", row[0], row[2])
                if now - self._touched.get(token_id, -1e9) >= 60.0:
                    self._touched[token_id] = now
                    await self.pool.run(_touch, token_id)
            if len(self._tokens) >= _CACHE_MAX:
                self._tokens.clear()
            self._tokens[token] = (now, principal)
        if principal is None:
            raise AuthError(401, "bearer token: unknown or revoked; ask an operator for a new "
                            "one (meshmon aggregator token create)")  # fmt: skip
        return principal

    def forget_tokens(self) -> None:
        """Drop cached token lookups (after a token was revoked through this process)."""
        self._tokens.clear()
