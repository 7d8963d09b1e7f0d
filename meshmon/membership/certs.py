"""Certificates named by reference in gossip: which to fetch, from whom, and what waits on them.

Theory of operation
-------------------
Gossip datagrams carry compact proofs that name the author's certificate by fingerprint
(:mod:`meshmon.membership.auth`). When a statement's certificate is not held, the authenticator
answers ``unknown-cert``; the core then records a *miss* here: the fingerprint (to fetch from
the node whose datagram named it, which held it to accept the statement) and the statement
itself (to verify again once the certificate arrives). Nothing here is trusted: a fetched
certificate counts only after the authenticator checked it like any other, and a statement
taken back out of :meth:`CertFetches.ready` goes through the merge rules and verification in
full, as if it had just arrived.

Every structure is bounded, so a sender that names endless made-up fingerprints costs at most
``cert_fetches`` fetches in flight of ``cert_batch`` fingerprints each, ``cert_fetches *
cert_batch`` fingerprints waiting to be asked for, and ``cert_pending`` statements kept: the
excess is dropped and counted, never queued. A fingerprint is asked for once at a time.
Statements wait until their certificate arrives (by any way: a fetch, a push-pull's full proof,
an mTLS peer) or a fetch is answered without it, or newer statements push them out.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from meshmon.membership.config import MembershipConfig
from meshmon.membership.messages import Addr, NodeMeta, State


@dataclass(frozen=True, slots=True)
class Statement:
    """A self-statement waiting for the certificate its proof names."""

    kind: State
    incarnation: int
    meta: NodeMeta
    proof: bytes
    reference: bytes


class CertFetches:
    """Misses, fetches in flight and statements waiting on them (bookkeeping only, no I/O)."""

    def __init__(self, config: MembershipConfig) -> None:
        self._max_flight = config.cert_fetches
        self._batch = config.cert_batch
        self._max_wanted = config.cert_fetches * config.cert_batch
        self._max_pending = config.cert_pending
        self._wanted: dict[bytes, Addr] = {}  # to ask for, and whose datagram named it
        self._flying: dict[int, list[bytes]] = {}  # fetch token -> fingerprints asked
        self._asked: set[bytes] = set()  # every fingerprint in flight
        # by (name, kind, certificate): a lie naming another certificate displaces nothing
        self._pending: collections.OrderedDict[tuple[str, State, bytes], Statement] = (
            collections.OrderedDict())
        self.dropped = 0
        """Misses not followed up because a bound was reached."""

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def wanted(self) -> bool:
        """Whether certificates wait to be asked for (:meth:`batches` may start fetches)."""
        return bool(self._wanted)

    @property
    def in_flight(self) -> int:
        """Fetches started and not finished."""
        return len(self._flying)

    def miss(self, statement: Statement, source: Addr | None) -> None:
        """A statement's certificate is not held; ``source`` sent it (None: no one to ask)."""
        key = (statement.meta.name, statement.kind, statement.reference)
        pending = self._pending
        pending.pop(key, None)
        pending[key] = statement
        if len(pending) > self._max_pending:
            pending.popitem(last=False)
            self.dropped += 1
        ref = statement.reference
        if source is None or ref in self._asked or ref in self._wanted:
            return
        if len(self._wanted) >= self._max_wanted:
            self.dropped += 1
            return
        self._wanted[ref] = source

    def batches(self) -> list[tuple[Addr, list[bytes]]]:
        """Fetches to start now, ``(source, fingerprints)``; report each with :meth:`started`."""
        out: list[tuple[Addr, list[bytes]]] = []
        free = self._max_flight - len(self._flying)
        if free <= 0 or not self._wanted:
            return out
        by_source: dict[Addr, list[bytes]] = {}
        for ref, source in self._wanted.items():
            refs = by_source.setdefault(source, [])
            if len(refs) < self._batch:
                refs.append(ref)
        for source, refs in by_source.items():
            if len(out) >= free:
                break
            for ref in refs:
                del self._wanted[ref]
            out.append((source, refs))
        return out

    def started(self, token: int, refs: list[bytes]) -> None:
        """A fetch for ``refs`` is under way as stream request ``token``."""
        self._flying[token] = refs
        self._asked.update(refs)

    def finished(self, token: int) -> list[bytes] | None:
        """Fetch ``token`` ended (answered or not): the fingerprints it asked for, or None if
        ``token`` was not a fetch."""
        refs = self._flying.pop(token, None)
        if refs is not None:
            self._asked.difference_update(refs)
        return refs

    def ready(self, held: Callable[[bytes], bool]) -> list[Statement]:
        """Take out the waiting statements whose certificate is now ``held``."""
        if not self._pending:
            return []
        out = [s for s in self._pending.values() if held(s.reference)]
        for s in out:
            del self._pending[(s.meta.name, s.kind, s.reference)]
        return out

    def forget(self, refs: list[bytes]) -> None:
        """Drop statements that wait on ``refs`` (a fetch for them ended without them)."""
        gone = set(refs)
        for key in [k for k, s in self._pending.items() if s.reference in gone]:
            del self._pending[key]
