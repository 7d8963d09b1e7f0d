"""The member table and memberlist's merge rules: what a node believes about every member.

:class:`MemberTable` is the half of the membership core that needs no timers of its own: the
view (alive/suspect/dead/left with incarnations), refutation, Lifeguard's awareness score, the
broadcast queue that news goes into, and the events the agent sees. The layers above add
stream work (``exchange``), probing (``probe``) and the driver API with gossip rounds (``core``).

Merge rules (memberlist's): ``Alive(i)`` is accepted if ``i`` is newer than what we hold (or the
member has been gone longer than ``dead_node_reclaim_time``); ``Suspect(i)`` and ``Dead(i)`` if
``i`` is at least what we hold and the member is not already dead or gone. Only a member raises
its own incarnation: news that it is suspect or dead, or an older life of it with other
metadata, makes it *refute* with a higher incarnation. Expelled (banned) names are never
accepted back.

Self-statements (an ``Alive``, a leave) change the view only with a proof that the member made
them itself (:mod:`meshmon.membership.auth`). The merge rules run first, so only news that would
change the view is verified: stale relays cost nothing. A refused statement changes nothing and
is counted in :attr:`MemberTable.refused` by reason. A statement whose proof names a
certificate this node does not hold yet (``unknown-cert``) is no lie: it is counted in
``stats["unknown_cert"]`` and handed to :class:`~meshmon.membership.certs.CertFetches`, which
has the core fetch the certificate from the sender and verify the statement again.

Proofs are kept in their full form (``Authenticator.for_state``, what push-pull carries) and
gossiped in their compact form (``for_gossip``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import random
from collections.abc import Mapping

from meshmon.membership import codec, timing
from meshmon.membership.auth import UNKNOWN_CERT, Authenticator, Refusal, Unchecked
from meshmon.membership.certs import CertFetches, Statement
from meshmon.membership.config import MembershipConfig
from meshmon.membership.events import Event, EventKind, Member, MemberEvent
from meshmon.membership.messages import (
    Addr,
    Alive,
    Dead,
    MemberState,
    Message,
    NodeMeta,
    State,
    Suspect,
)
from meshmon.membership.queue import BroadcastQueue
from meshmon.membership.suspicion import Suspicion
from meshmon.membership.view import MemberMap, ProbeOrder, Snapshot

ALIVE, SUSPECT, DEAD, LEFT = State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT
LIVE = (ALIVE, SUSPECT)
GONE = (DEAD, LEFT)
T_SUSPECT, T_RELAY, T_STREAM = range(3)
"""Timer kinds in the shared heap of ``(deadline, tiebreak, kind, key)``; the tiebreak counts
timers in the order they were set, so timers due at once fire in that order in every process."""


class MemberTable:
    """This node's view of the mesh and the rules that change it.

    Args:
        config: protocol timing.
        local: this node's metadata.
        rng: a seeded ``random.Random`` (or a seed).
        now: the current time.
        incarnation: this node's starting incarnation.
        auth: proves this node's statements and verifies others' (default: :class:`Unchecked`).
    """

    def __init__(self, config: MembershipConfig, local: NodeMeta, rng: random.Random | int,
                 now: float, incarnation: int = 0, auth: Authenticator | None = None) -> None:
        self.config = config
        self._auth: Authenticator = auth if auth is not None else Unchecked()
        self._proofs: dict[str, bytes] = {}  # name -> proof of its accepted alive or leave
        self._certs = CertFetches(config)
        self._source: Addr | None = None  # who sent the datagram being handled (None: a state)
        self._preloaded_proofs: Mapping[str, bytes] = {}
        self.refused: collections.Counter[str] = collections.Counter()
        """Self-statements refused, by reason (see ``auth.REASONS``)."""
        self._refusals: collections.deque[Refusal] = collections.deque(maxlen=256)
        self._rng = rng if isinstance(rng, random.Random) else random.Random(rng)
        self._name = local.name
        self._members = MemberMap()  # over the snapshot of a preload, if any (see view)
        self._snapshot: Snapshot | None = None
        self._encoded: dict[str, tuple[Member, bytes, bytes]] = {}  # push-pull entries
        self._probe_list: list[str] | ProbeOrder = []  # every known name but ours, in order
        self._probe_index = 0
        self._live = 0  # alive + suspect, ourselves included
        self._gone: dict[str, float] = {}  # dead/left members -> since
        self._banned: set[str] = set()
        self.rtt: dict[str, float] = {}
        """Seconds from our ping to its direct ack, the latest round, by member name."""
        self._queue = BroadcastQueue(config.max_queue)
        self._awareness = 0
        self._suspicions: dict[str, Suspicion] = {}
        self._timers: list[tuple[float, int, int, object]] = []
        self._timers_set = itertools.count()  # tiebreaks (see T_SUSPECT)
        self._leaving = False
        self._events: collections.deque[Event] = collections.deque(maxlen=config.max_events)
        self.stats: collections.Counter[str] = collections.Counter()
        """Counters: datagrams/bytes sent, malformed input, suspicions, refutations..."""
        self._set(Member(local, ALIVE, incarnation, now))
        self._broadcast_alive(self._members[self._name])
        size = len(self._queue.peek(self._name) or b"")
        if size > config.max_datagram_plaintext - codec.FRAME_OVERHEAD:
            raise ValueError(
                f"this node's announcement is {size} bytes with its proof, more than a datagram "
                f"carries ({config.max_datagram_plaintext}); issue a certificate with fewer "
                "addresses, names or tags")

    @property
    def name(self) -> str:
        """This node's name."""
        return self._name

    @property
    def local(self) -> Member:
        """This node as the mesh should see it."""
        return self._members[self._name]

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score: 0 is healthy, up to ``awareness_max_multiplier - 1``."""
        return self._awareness

    @property
    def queue_length(self) -> int:
        """Broadcasts waiting to be gossiped."""
        return len(self._queue)

    def members(self) -> list[Member]:
        """Every member this node remembers, itself included (dead/left ones until reaped)."""
        return list(self._members.values())

    def member(self, name: str) -> Member | None:
        """One member by name."""
        return self._members.get(name)

    def num_live(self) -> int:
        """Alive plus suspect members, this node included."""
        return self._live

    def is_banned(self, name: str) -> bool:
        """Whether ``name`` was expelled."""
        return name in self._banned

    def take_refusals(self) -> list[Refusal]:
        """Self-statements refused since the last call (for logging; counted in ``refused``)."""
        out = list(self._refusals)
        self._refusals.clear()
        return out

    def preload(self, members: Mapping[str, Member] | Snapshot,
                proofs: Mapping[str, bytes] | None = None) -> None:
        """Adopt a snapshot of *alive* members (and their proofs) without gossip or events.

        The simulator's warm start for large meshes: every view given the same
        :class:`~meshmon.membership.view.Snapshot` shares it and stores only its departures
        from it (see ``view``); an agent could equally restore a persisted view. This node's
        own entry in the snapshot is ignored.
        """
        snap = members if isinstance(members, Snapshot) else Snapshot(members, proofs)
        me = self._members[self._name]
        self._snapshot = snap
        self._members = MemberMap(snap.members)
        self._members[self._name] = me
        self._preloaded_proofs = snap.proofs
        self._encoded.clear()
        hole = snap.index.get(self._name)
        self._probe_list = ProbeOrder(snap.names, hole)
        size = len(self._probe_list)
        self._probe_index = self._rng.randrange(size) if size else 0
        self._live = len(self._members)
        self._gone.clear()

    def certificates(self, request: bytes) -> bytes:
        """Server side of a certificate fetch: the held certificates the request names.

        Raises:
            MalformedMessage: the request was not valid (or asked for too many).
        """
        refs = codec.decode_blobs(request, self.config.cert_batch, codec.MAX_REF)
        held = (self._auth.certificate(ref) for ref in refs)
        return codec.encode_blobs([der for der in held if der is not None])

    def learn_certificate(self, now: float, certificate: bytes) -> bool:
        """Hold a certificate met elsewhere (an mTLS peer's) if the authenticator accepts it;
        announcements that waited for it are verified again."""
        if self._auth.learn(certificate) is not None:
            return False
        self._retry_waiting(now)
        return True

    def _learn_fetched(self, now: float, refs: list[bytes], answer: bytes | None) -> None:
        """A certificate fetch for ``refs`` ended with ``answer`` (None: it failed)."""
        if answer is None:
            self.stats["cert_fetches_failed"] += 1
        else:
            try:
                ders = codec.decode_blobs(answer, len(refs), codec.MAX_PROOF)
            except codec.MalformedMessage:
                self.stats["malformed_certs"] += 1
                ders = []
            for der in ders:
                ok = self._auth.learn(der) is None
                self.stats["certs_learned" if ok else "certs_refused"] += 1
        self._retry_waiting(now)
        if answer is not None:  # the peer lacks them (made up?); after a failure, keep waiting
            held = self._auth.certificate  # for the next sender, push-pull or mTLS peer
            self._certs.forget([ref for ref in refs if held(ref) is None])

    def _retry_waiting(self, now: float) -> None:
        held = self._auth.certificate
        for st in self._certs.ready(lambda ref: held(ref) is not None):
            self.stats["cert_retries"] += 1
            if st.kind is ALIVE:
                self._on_alive(now, st.incarnation, st.meta, st.proof)
            else:
                self._on_dead(now, st.incarnation, st.meta.name, st.meta.name, st.meta, st.proof)

    # -- member table ------------------------------------------------------------------------

    def _set(self, m: Member) -> None:
        name = m.meta.name
        old = self._members.get(name)
        self._members[name] = m
        if old is None:
            if name != self._name:
                lst = self._probe_list
                lst.append(name)
                i = self._rng.randrange(len(lst))
                lst[i], lst[-1] = lst[-1], lst[i]
        else:
            self._live -= old.state in LIVE
        self._live += m.state in LIVE
        if m.state in GONE:
            self._gone[name] = m.since
        else:
            self._gone.pop(name, None)

    def _entry(self, name: str, m: Member) -> bytes:
        """``m``'s push-pull state entry, encoded (kept until the member or its proof changes)."""
        proof = self._proof_of(name) if m.state is ALIVE or m.state is LEFT else b""
        cached = self._encoded.get(name)
        if cached is not None and cached[0] is m and cached[1] is proof:
            return cached[2]
        entry = codec.encode_member_state(MemberState(m.meta, m.incarnation, m.state, proof))
        self._encoded[name] = (m, proof, entry)
        return entry

    def _schedule(self, deadline: float, kind: int, key: str | int) -> None:
        """Set a timer; it fires unless the thing it times changed its deadline or ended."""
        heapq.heappush(self._timers, (deadline, next(self._timers_set), kind, key))

    def _emit(self, kind: EventKind, name: str, now: float) -> None:
        if name == self._name:
            return
        if len(self._events) == self._events.maxlen:
            self.stats["events_dropped"] += 1
        self._events.append(MemberEvent(kind, self._members[name], now))

    def _enqueue(self, key: str, msg: Message) -> None:
        self._queue.put(key, codec.encode_message(msg))

    def _broadcast_alive(self, m: Member) -> None:
        name = m.meta.name
        if name == self._name:
            self._proofs[name] = self._auth.prove(ALIVE, m.incarnation, m.meta)
        self._enqueue(name, Alive(m.incarnation, m.meta,
                                  self._auth.for_gossip(self._proof_of(name))))

    def _proof_of(self, name: str) -> bytes:
        proof = self._proofs.get(name)
        return proof if proof is not None else self._preloaded_proofs.get(name, b"")

    def _verified(self, now: float, kind: State, inc: int, meta: NodeMeta, proof: bytes) -> bool:
        reason = self._auth.verify(kind, inc, meta, proof)
        if reason is None:
            return True
        if reason == UNKNOWN_CERT:
            ref = self._auth.reference(meta, proof)
            if ref is not None:  # else the authenticator broke its word: nothing to fetch
                self.stats["unknown_cert"] += 1
                self._certs.miss(Statement(kind, inc, meta, proof, ref), self._source)
                return False
        self.refused[reason] += 1
        self._refusals.append(Refusal(meta.name, reason, kind, inc, now))
        return False

    def _refute(self, now: float, accused: int) -> None:
        me = self._members[self._name]
        self._set(Member(me.meta, ALIVE, max(me.incarnation, accused) + 1, now))
        self._broadcast_alive(self._members[self._name])
        self.stats["refutations"] += 1
        self._change_awareness(1)

    def _change_awareness(self, delta: int) -> None:
        if delta < 0 and not self._awareness:  # healthy stays healthy (every direct ack)
            return
        if self.config.lifeguard:
            if delta > 0:
                self.stats["awareness_raised"] += delta
            top = self.config.awareness_max_multiplier - 1
            self._awareness = min(top, max(0, self._awareness + delta))

    # -- merge rules -------------------------------------------------------------------------

    def _on_alive(self, now: float, inc: int, meta: NodeMeta, proof: bytes) -> None:
        name = meta.name
        if name in self._banned:
            return
        old = self._members.get(name)
        if name == self._name:
            assert old is not None
            if self._leaving or inc < old.incarnation or (
                    inc == old.incarnation and meta == old.meta):
                return
            if self._verified(now, ALIVE, inc, meta, proof):
                self._refute(now, inc)  # an older life of ours is spreading: outbid it
            return
        if old is None:
            if not self._verified(now, ALIVE, inc, meta, proof):
                return
            self._proofs[name] = self._auth.for_state(meta, proof)
            self._set(Member(meta, ALIVE, inc, now))
            self._broadcast_alive(self._members[name])
            self._emit(EventKind.JOINED, name, now)
            return
        reclaim = self.config.dead_node_reclaim_time
        reclaimable = old.state in GONE and reclaim > 0 and now - old.since >= reclaim
        if (inc <= old.incarnation and not reclaimable) or not self._verified(
                now, ALIVE, inc, meta, proof):
            return
        self._proofs[name] = self._auth.for_state(meta, proof)
        self._suspicions.pop(name, None)
        self._set(Member(meta, ALIVE, inc, now if old.state is not ALIVE else old.since))
        self._broadcast_alive(self._members[name])
        if old.state in GONE:
            self._emit(EventKind.JOINED, name, now)
        elif old.state is SUSPECT:
            self._emit(EventKind.ALIVE, name, now)
        if old.meta != meta and old.state is not DEAD and old.state is not LEFT:
            self._emit(EventKind.UPDATED, name, now)

    def _on_suspect(self, now: float, inc: int, name: str, source: str) -> None:
        old = self._members.get(name)
        if old is None or inc < old.incarnation or name in self._banned:
            return
        if name == self._name:
            if not self._leaving:
                self._refute(now, inc)
            return
        if old.state is SUSPECT:
            suspicion = self._suspicions.get(name)
            if suspicion is not None and self.config.lifeguard and suspicion.confirm(source):
                self._schedule(suspicion.deadline, T_SUSPECT, name)
                self._enqueue(name, Suspect(inc, name, source))
            return
        if old.state is not ALIVE:
            return
        cfg = self.config
        n = self._live
        k = timing.expected_confirmations(cfg.suspicion_mult, n) if cfg.lifeguard else 0
        low = timing.suspicion_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        suspicion = Suspicion(inc, source, now, k, low, cfg.suspicion_max_timeout_mult * low)
        self._suspicions[name] = suspicion
        self._schedule(suspicion.deadline, T_SUSPECT, name)
        self._set(Member(old.meta, SUSPECT, inc, now))
        self._enqueue(name, Suspect(inc, name, source))
        self.stats["suspected"] += 1
        self._emit(EventKind.SUSPECT, name, now)

    def _on_dead(self, now: float, inc: int, name: str, source: str,
                 meta: NodeMeta | None = None, proof: bytes = b"") -> None:
        old = self._members.get(name)
        if old is None or inc < old.incarnation or old.state in GONE:
            return
        left = source == name
        if left:  # a leave: only the member itself may say so
            if meta is None or meta.name != name:
                meta = old.meta
                proof = b""
            if not self._verified(now, LEFT, inc, meta, proof):
                return
        if name == self._name:
            if not self._leaving:
                self._refute(now, inc)
            return
        self._suspicions.pop(name, None)
        if left:
            assert meta is not None
            self._proofs[name] = self._auth.for_state(meta, proof)
            self._set(Member(meta, LEFT, inc, now))
            self._enqueue(name, Dead(inc, name, name, meta, self._auth.for_gossip(proof)))
        else:
            self._set(Member(old.meta, DEAD, inc, now))
            self._enqueue(name, Dead(inc, name, source))
        self.stats["left" if left else "declared_dead"] += 1
        self._emit(EventKind.LEFT if left else EventKind.FAILED, name, now)

    def _random_members(self, k: int, exclude: str = "", dead_after: float | None = None
                        ) -> list[Member]:
        """Up to ``k`` distinct random live members (and recently dead, if ``dead_after``)."""
        lst = self._probe_list
        chosen: dict[str, Member] = {}
        size = len(lst)
        if not size:
            return []
        members, banned = self._members, self._banned
        # randrange(size), inlined (random.Random draws it so): a gossip round's hot spot
        getrandbits, bits = self._rng.getrandbits, size.bit_length()
        for _ in range(3 * k + 3 if size > 3 * k else size * 3):
            i = getrandbits(bits)
            while i >= size:
                i = getrandbits(bits)
            name = lst[i]
            m = members.get(name)
            if m is None or name in chosen or name == exclude or name in banned:
                continue
            if m.state in LIVE or (dead_after is not None and m.state is DEAD
                                    and m.since >= dead_after):
                chosen[name] = m
                if len(chosen) >= k:
                    break
        return list(chosen.values())

    def _reap(self, now: float, names: list[str]) -> None:
        gone = set(names)
        for name in names:
            m = self._members.pop(name)
            self._proofs.pop(name, None)
            self._encoded.pop(name, None)
            self._gone.pop(name, None)
            self.rtt.pop(name, None)
            self._queue.discard(name)
            self._events.append(MemberEvent(EventKind.REAPED, m, now))
        self._probe_list = [n for n in self._probe_list if n not in gone]
        self._probe_index = min(self._probe_index, len(self._probe_list))
