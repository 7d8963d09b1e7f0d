"""The membership driver: runs the sans-IO :class:`~meshmon.membership.Membership` core over the
real :class:`~meshmon.net.MeshTransport` (sealed UDP + mTLS TCP), and spreads the CRL.

Theory of operation
-------------------
One task sleeps until the core's next deadline (or until woken by new input), ticks it and
carries out what it asks: datagrams are sealed and sent, stream requests (push-pull, TCP ping)
run as their own tasks over mTLS and report back with ``stream_result``. The receive task feeds
authenticated membership datagrams to the core; malformed ones are counted and dropped (the
core changes nothing on bad input). The transport serves the other side of push-pull and TCP
ping. Member events teach the transport where members' TCP ports are and are handed to the
agent's listener (placement follows the view).

A member's statements about itself (alive, leave) count only with its signature by its
certified key (:class:`~meshmon.membership.identity.CertAuthenticator`); the core refuses the
rest without changing the view, counts them by reason (``core.refused``, shown by ``meshmon
status``) and this driver logs them at most once per reason every 10 s, naming the peer that
passed them on.

Gossip names members' certificates by reference (:mod:`meshmon.membership.auth`): the core asks
for a certificate it lacks with a ``CERTS`` stream request to the node whose datagram named
it; this driver fetches it with an ``mm-certs`` request and hands the answer back (the core has
the authenticator check each certificate against the CA and CRL before holding it). The
certificate of every mTLS peer, in either direction, is offered to the core as well.

CRL distribution rides on the core's user broadcasts under key ``"crl"`` with the CRL number as
version: any node that learns a newer CA-signed CRL (from its file or from a peer) adopts it,
re-publishes it, drops keys of revoked peers and expels them from membership.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import cbor2
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshmon import pki
from meshmon.logs import RateLimitedLog
from meshmon.membership import (
    Addr,
    EventKind,
    MalformedMessage,
    MemberEvent,
    Membership,
    MembershipConfig,
    NodeMeta,
    State,
    StreamKind,
    StreamRequest,
    UserEvent,
    codec,
)
from meshmon.membership.identity import CertAuthenticator
from meshmon.net import (
    PURPOSE_MEMBERSHIP,
    Datagram,
    MeshTransport,
    PeerRejectedError,
    PeerUnreachableError,
    RemoteError,
)

log = logging.getLogger(__name__)

CRL_KEY = "crl"
_REFUSAL_HINTS = {
    "name-mismatch": "signed by a certificate issued to another name",
    "tags-mismatch": "tags differ from the certificate's; the CA grants tags",
    "address-mismatch": "address is not among the certificate's IPs",
    "fingerprint-mismatch": "fingerprint is not the signing certificate's",
    "bad-signature": "signature does not match the statement",
    "untrusted-cert": "certificate not issued by this mesh's CA",
    "revoked": "certificate is revoked",
    "expired": "certificate is outside its validity",
    "missing-proof": "no signature: only the member itself may say this",
    "malformed-proof": "unreadable signature",
}
PUSH_PULL, TCP_PING, CERTS = "mm-push-pull", "mm-ping", "mm-certs"


def failure_reason(exc: Exception) -> str:
    """Why a stream request failed, in one word: ``timeout`` (no answer in time: a busy or
    stopped peer), ``refused`` (nothing listens), ``rejected`` (TLS refused a certificate),
    ``broken`` (the stream broke mid-way), ``remote_error`` (the peer answered with an error),
    else ``unreachable``."""
    if isinstance(exc, RemoteError):
        return "remote_error"
    causes: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(causes) < 20:
        causes.append(cause)
        if isinstance(cause, BaseExceptionGroup):
            causes.extend(cause.exceptions)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, PeerRejectedError) for c in causes):
        return "rejected"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "refused"
    if "no answer to" in str(exc):
        return "timeout"
    if "mid-stream" in str(exc):
        return "broken"
    return "unreachable"


def _warn_seed(addr: Addr, exc: Exception) -> None:
    log.warning("seed %s:%s: join failed: %s", addr[0], addr[1], exc)


class MeshService:
    """Drives one node's membership over a transport."""

    def __init__(
        self,
        config: MembershipConfig,
        local: NodeMeta,
        transport: MeshTransport,
        trust: pki.Trust,
        seeds: Sequence[Addr],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.trust = trust
        self.seeds = list(seeds)
        self.on_change = on_change
        self.on_user: Callable[[str, bytes], None] | None = None
        """Application data (other than the CRL) learnt from peers: alert digests."""
        self.on_seed_failure: Callable[[Addr, Exception], None] = _warn_seed
        """Called when a join through a seed fails (the agent wires :mod:`meshmon.seeds`)."""
        self.auth = CertAuthenticator(transport.identity, trust)
        self.core = Membership(config, local, rng=random.Random(), now=trio.current_time(),
                               auth=self.auth)
        self.bad_input = RateLimitedLog(log)
        self.counters: dict[str, int] = {"malformed": 0, "stream_failures": 0}
        self.failures: collections.Counter[str] = collections.Counter()
        """Failed stream requests by ``kind:reason`` (:func:`failure_reason`), e.g.
        ``push_pull:timeout``: what ``stream_failures`` counts, and why."""
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._leaving = False

    def wake(self) -> None:
        """Run the core now (something was published)."""
        self._wake.set()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[MeshService] = trio.TASK_STATUS_IGNORED
                  ) -> None:  # fmt: skip
        """Join through the seeds and keep membership going until cancelled."""
        self.transport.on_request(PUSH_PULL, self._serve_push_pull)
        self.transport.on_request(TCP_PING, self._serve_ping)
        self.transport.on_request(CERTS, self._serve_certs)
        self.transport.on_peer_cert = self._learn_cert
        self.transport.on_unknown_sender = self._unknown_sender
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.publish_crl()
            self.core.join(trio.current_time(), self.seeds)
            nursery.start_soon(self._receive)
            task_status.started(self)
            while True:
                now = trio.current_time()
                self.core.tick(now)
                await self._flush()
                self._wake = trio.Event()
                with trio.move_on_at(self.core.next_deadline()) as waited:
                    await self._wake.wait()
                if waited.cancelled_caught:  # a deadline: see the answers that beat it first
                    self._drain()

    def alone(self) -> bool:
        """True while this node knows no other live member."""
        return self.core.num_live() <= 1

    def rejoin(self) -> None:
        """Ask every seed for a join again (:class:`meshmon.seeds.SeedWatch` decides when)."""
        if self._leaving:
            return
        self.core.join(trio.current_time(), self.seeds)
        self._wake.set()

    async def leave(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 - a bounded goodbye
        """Announce a graceful leave and give it up to ``timeout`` to spread."""
        self._leaving = True
        self.core.leave(trio.current_time())
        with trio.move_on_after(timeout):
            while not self.core.leave_done:
                await self._flush()
                self.core.tick(trio.current_time())
                with trio.move_on_at(min(self.core.next_deadline(), trio.current_time() + 0.05)):
                    await trio.sleep_forever()
        await self._flush()

    async def _receive(self) -> None:
        channel = self.transport.channel(PURPOSE_MEMBERSHIP)
        async for datagram in channel:
            if self._handle(datagram):
                await self._flush()
                self._wake.set()

    def _handle(self, datagram: Datagram) -> bool:
        """Feed one authenticated datagram to the core; False if it was malformed."""
        try:
            self.core.handle_datagram(trio.current_time(), datagram.addr, datagram.plaintext)
        except MalformedMessage as exc:
            self.counters["malformed"] += 1
            self.bad_input.warning(
                "malformed", "dropped malformed membership datagram from %s (%s): %s",
                datagram.sender, datagram.addr, exc,
            )
            return False
        self._log_refusals(f"{datagram.sender} ({datagram.addr[0]})")
        return True

    def _drain(self) -> None:
        """Hand the core every datagram that arrived while this process waited for the CPU
        (the socket's and the receive channel's), before a deadline is judged: an ack already
        here is an ack in time."""
        self.transport.drain()
        channel = self.transport.channel(PURPOSE_MEMBERSHIP)
        while True:
            try:
                datagram = channel.receive_nowait()
            except trio.WouldBlock:
                return
            self._handle(datagram)

    async def _flush(self) -> None:
        for event in self.core.take_events():
            self._on_event(event)
        for addr, data in self.core.take_datagrams():
            await self.transport.send_datagram(addr, data, PURPOSE_MEMBERSHIP)
        if self._nursery is not None:
            for request in self.core.take_stream_requests():
                self._nursery.start_soon(self._stream, request)

    async def _stream(self, request: StreamRequest) -> None:
        # The core gives up on an answer at its deadline by itself (a TCP ping's is the end of
        # its probe round); the exchange is still given tcp_timeout to finish, so that a busy
        # machine completes handshakes rather than leaving half-done ones behind on both ends
        # to be repeated. An answer after the deadline is ignored (the core counts it late).
        timeout = max(self.config.tcp_timeout, request.deadline - trio.current_time())
        try:
            if request.kind is StreamKind.PUSH_PULL:
                reply = await self.transport.request(request.addr, PUSH_PULL,
                                                     cbor2.dumps([request.join, request.payload]),
                                                     timeout=timeout)  # fmt: skip
                self.core.stream_result(trio.current_time(), request.token, True, reply)
                self._log_refusals(f"a push-pull with {request.addr[0]}:{request.addr[1]}")
            elif request.kind is StreamKind.CERTS:
                reply = await self.transport.request(
                    self.transport.tcp_address_of(request.addr), CERTS, request.payload,
                    timeout=timeout)
                self.core.stream_result(trio.current_time(), request.token, True, reply)
            else:
                reply = await self.transport.request(request.addr, TCP_PING,
                                                     (request.node or "").encode(), timeout=timeout)
                self.core.stream_result(trio.current_time(), request.token, reply == b"1")
        except (PeerUnreachableError, RemoteError) as exc:
            self.counters["stream_failures"] += 1
            reason = failure_reason(exc)
            self.failures[f"{request.kind.name.lower()}:{reason}"] += 1
            if request.join and request.node is None:  # a seed: the operator must hear of it
                self.on_seed_failure(request.addr, exc)
            else:  # repeated by the protocol; expected now and then on a busy host
                self.bad_input.log(logging.INFO, f"stream-{request.kind.name}-{reason}",
                                   "%s with %s:%s failed (%s): %s", request.kind.name.lower(),
                                   request.addr[0], request.addr[1], reason, exc)  # fmt: skip
            self.core.stream_result(trio.current_time(), request.token, False)
        except MalformedMessage as exc:
            self.counters["malformed"] += 1
            self.bad_input.warning("pp", "malformed push-pull answer from %s: %s",
                                   request.addr, exc)  # fmt: skip
            self.core.stream_result(trio.current_time(), request.token, False)
        await self._flush()
        self._wake.set()

    # --- the server side ------------------------------------------------------------------------

    async def _serve_push_pull(self, peer: pki.PeerIdentity, payload: bytes) -> bytes:
        try:
            join, state = cbor2.loads(payload)
            if not isinstance(state, bytes):
                raise MalformedMessage("push-pull state is not bytes")
        except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
            raise MalformedMessage(f"bad push-pull request from {peer.name}: {exc}") from None
        self.core.merge_remote_state(trio.current_time(), state)
        self._log_refusals(f"a push-pull from {peer.name}")
        await self._flush()
        self._wake.set()
        return self.core.local_state(join=bool(join))

    async def _serve_ping(self, peer: pki.PeerIdentity, payload: bytes) -> bytes:
        return b"1" if self.core.answers_to(payload.decode(errors="replace")) else b"0"

    async def _serve_certs(self, peer: pki.PeerIdentity, payload: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        try:
            return self.core.certificates(payload)
        except MalformedMessage as exc:
            self.counters["malformed"] += 1
            self.bad_input.warning("certs", "malformed certificate request from %s: %s",
                                   peer.name, exc)  # fmt: skip
            return codec.encode_blobs([])

    def _unknown_sender(self, addr: Addr) -> None:
        # someone sealed for us whom we cannot place: pull its view (rate-limited)
        tcp = self.transport.tcp_address_of(addr)
        if not self._leaving and self.core.catch_up(trio.current_time(), tcp):
            self._wake.set()

    def _learn_cert(self, der: bytes) -> None:
        if self.core.learn_certificate(trio.current_time(), der):
            self._wake.set()  # announcements that waited for it may have been accepted

    def _log_refusals(self, via: str) -> None:
        for r in self.core.take_refusals():
            self.bad_input.warning(
                f"refused-{r.reason}",
                "refused %s announcement of %r at incarnation %d, passed on by %s: %s (%s)",
                r.kind.name.lower(), r.name, r.incarnation, via, r.reason,
                _REFUSAL_HINTS.get(r.reason, "not proven by its certificate"),
            )

    # --- events and the CRL -----------------------------------------------------------------------

    def _on_event(self, event: MemberEvent | UserEvent) -> None:
        if isinstance(event, MemberEvent):
            meta = event.member.meta
            if meta.name != self.core.name:
                if event.kind in (EventKind.JOINED, EventKind.UPDATED):
                    self._seal_for(meta)
                self.transport.learn_peer(meta.udp_addr, meta.tcp_addr, meta.name)
            log.info("member %s: %s (%s:%s)", meta.name, event.kind.name.lower(), meta.address,
                     meta.udp_port)  # fmt: skip
            self.on_change()
        elif event.key != CRL_KEY:
            if self.on_user is not None:
                self.on_user(event.key, event.payload)
        else:
            try:
                crl = x509.load_der_x509_crl(event.payload)
            except ValueError as exc:
                self.bad_input.warning("crl", "ignored an unreadable CRL from gossip: %s", exc)
                return
            self.adopt_crl(crl, source="gossip")

    def _seal_for(self, meta: NodeMeta) -> None:
        """Let the transport seal datagrams for a member the core just accepted, without a
        ``hello``: the core accepted its announcement only with a signature by the certificate
        its metadata names, checked against the CA, the CRL, its name, tags and address; that
        certificate is exactly what a hello's handshake would teach. One mTLS exchange per
        pair of members (1,225 in a mesh of 50, most of a startup's CPU) is saved this way.
        """
        der = self.auth.certificate(meta.cert_fingerprint)
        if der is None:
            return
        try:
            self.transport.keyring.add_peer(der, time.time())
        except pki.CertificateError as exc:  # revoked or expired since: no sealing for it
            log.debug("not sealing for %s: %s", meta.name, exc)

    def adopt_crl(self, crl: x509.CertificateRevocationList, source: str) -> bool:
        """Adopt ``crl`` if the CA signed it and it is newer; spread it and expel the revoked."""
        try:
            newer = self.trust.update_crl(crl)
        except pki.PkiError as exc:
            self.bad_input.warning("crl-sig", "ignored a CRL from %s: %s", source, exc)
            return False
        if not newer:
            return False
        log.warning("adopted CRL #%d from %s", self.trust.crl_number, source)
        revoked = set(self.transport.refresh_trust())
        now = trio.current_time()
        for name in sorted(revoked - {self.core.name}):
            log.warning("expelling %s: its certificate is revoked", name)
            self.core.expel(now, name)
        self.publish_crl()
        self.on_change()
        self._wake.set()
        return True

    def publish_crl(self) -> None:
        """Offer our CRL to the mesh (a no-op if peers already have this version)."""
        der = self.trust.crl.public_bytes(serialization.Encoding.DER)
        self.core.publish(trio.current_time(), CRL_KEY, self.trust.crl_number, der)

    # --- views --------------------------------------------------------------------------------

    def members_json(self) -> list[dict[str, Any]]:
        """The view for the control API."""
        now = trio.current_time()
        wall = time.time()
        rtt = self.core.rtt
        out = []
        for m in self.core.members():
            seconds = rtt.get(m.meta.name) if m.state in (State.ALIVE, State.SUSPECT) else None
            out.append({
                "name": m.meta.name, "address": m.meta.address, "udp_port": m.meta.udp_port,
                "tcp_port": m.meta.tcp_port, "state": m.state.name.lower(),
                "incarnation": m.incarnation, "tags": list(m.meta.tags),
                "version": m.meta.version, "since": wall - max(0.0, now - m.since),
                # the latest direct gossip ping's round trip from this agent (None: not yet,
                # this agent itself, or a member dead or gone)
                "rtt_ms": None if seconds is None else round(seconds * 1000, 3),
            })  # fmt: skip
            if m.meta.sync_urls:
                out[-1]["sync_urls"] = list(m.meta.sync_urls)
        return out

