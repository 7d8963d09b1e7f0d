"""The membership core's TCP work: push-pull state exchanges, application data, certificates.

:class:`Exchanges` is the layer of the core (:mod:`meshmon.membership.core`) that asks the driver
for streams (:class:`~meshmon.membership.events.StreamRequest`) and handles what they carry:

* push-pull: this node's full state (:meth:`Exchanges.local_state`) for a peer, whose state it
  merges (:meth:`Exchanges.merge_remote_state`); a remote *dead* only makes us *suspect*, so the
  member gets a chance to refute. Push-pulls run on join (through seeds), periodically (every
  ``push_pull_interval`` scaled by ``timing.push_pull_scale``), as *reconnects* to seeds when
  alone or to a dead member (serf's: with probability dead/alive, so big meshes do not storm),
  which heal partitions, and as *catch-up* pulls from a node that knows us before we know it;
* application data (:meth:`Exchanges.publish`): kept by key and version, gossiped inline when
  small, announced when large and pulled from its holder with a push-pull;
* certificates named by reference (see :mod:`meshmon.membership.certs`), fetched from the node
  whose datagram named them;
* TCP pings, asked for by a probe round (see :mod:`meshmon.membership.probe`).

Every request has a deadline timer; the core (``Membership.stream_result``) routes the results.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from meshmon.membership import codec, timing, view
from meshmon.membership.auth import Authenticator
from meshmon.membership.config import MembershipConfig
from meshmon.membership.events import StreamKind, StreamRequest, UserEvent
from meshmon.membership.messages import Addr, NodeMeta, UserData, UserNotice
from meshmon.membership.state import ALIVE, DEAD, LEFT, LIVE, T_STREAM, MemberTable

_USER_PREFIX = "\x00"  # queue keys: a member's name, or this prefix + a user key (names can't)
_MAX_USER_KEYS = 16384  # the CRL and one alert digest per member (meshmon.alerts)


class Exchanges(MemberTable):
    """The member table plus stream requests, push-pull merges and application data.

    Args: as :class:`~meshmon.membership.state.MemberTable`.
    """

    _next_push_pull: float
    _next_reconnect: float
    """Set by ``Membership.__init__``, which draws the first phase of every periodic task."""

    def __init__(self, config: MembershipConfig, local: NodeMeta, rng: random.Random | int,
                 now: float, incarnation: int = 0, auth: Authenticator | None = None) -> None:
        super().__init__(config, local, rng, now, incarnation, auth)
        self._seq = 0  # probe sequence numbers and stream tokens
        self._streams: dict[int, tuple[StreamRequest, str | None]] = {}
        self._stream_out: list[StreamRequest] = []
        self._seeds: tuple[Addr, ...] = ()
        self._user: dict[str, tuple[int, bytes]] = {}
        self.user_filter: Callable[[str, int, bytes], bool] | None = None
        """Accepts or refuses application data from peers before it is kept or passed on."""
        self._pulling: dict[str, int] = {}
        self._next_catch_up = now
        self._catch_up_from: Addr | None = None

    # -- public API --------------------------------------------------------------------------

    def user_data(self, key: str) -> tuple[int, bytes] | None:
        """The newest ``(version, payload)`` known for an application key."""
        return self._user.get(key)

    def join(self, now: float, seeds: Iterable[Addr]) -> None:
        """Join through seeds (TCP addresses): asks the driver for a push-pull with each.

        The seeds are remembered and retried every ``reconnect_interval`` while this node
        knows no other live member.
        """
        self._seeds = tuple(s for s in seeds if s != self.local.meta.tcp_addr)
        deadline = now + max(self.config.tcp_timeout, self.config.join_timeout)
        asked = {r.addr for r, _ in self._streams.values() if r.join}  # still waiting: no twice
        for seed in self._seeds:
            if seed not in asked:
                self._request_stream(now, StreamKind.PUSH_PULL, seed, None, join=True,
                                     deadline=deadline)

    def publish(self, now: float, key: str, version: int, payload: bytes) -> bool:
        """Disseminate an application payload; a higher ``version`` of ``key`` replaces a lower.

        Payloads up to ``max_user_inline`` bytes ride in datagrams; larger ones are announced
        and peers pull them with a push-pull. Returns False if ``version`` is not newer.
        """
        codec.encode_message(UserData(key, version, payload))  # validates types cheaply
        if not key or len(key) > 64:
            raise ValueError("user keys are 1-64 characters")
        return self._on_user(now, key, version, payload, local=True)

    def catch_up(self, now: float, addr: Addr) -> bool:
        """The driver could not open a datagram from TCP address ``addr``'s node: it knows us,
        we do not know it yet. Pull its full state (push-pull over mTLS, so only a member
        answers), at most every ``catch_up_interval``: one asked for sooner waits for the end
        of the interval (the newest such address); True if a push-pull was requested now."""
        if self._leaving:
            return False
        if now < self._next_catch_up:
            self._catch_up_from = addr
            return False
        self._catch_up_from = None
        self._next_catch_up = now + self.config.catch_up_interval
        self.stats["catch_up"] += 1
        self._request_stream(now, StreamKind.PUSH_PULL, addr, None, join=False)
        return True

    def take_stream_requests(self) -> list[StreamRequest]:
        """TCP work for the driver; report each with :meth:`stream_result`."""
        out, self._stream_out = self._stream_out, []
        return out

    def local_state(self, join: bool = False) -> bytes:
        """This node's full view, encoded for a push-pull exchange."""
        user = tuple(UserData(k, v, p) for k, (v, p) in self._user.items())
        return view.encode_state(self._members, self._snapshot, self._entry, join, user)

    def merge_remote_state(self, now: float, data: bytes) -> None:
        """Merge a peer's push-pull state (the server side calls this, then sends ours).

        Only entries that differ from ours are decoded (see ``view``): an equal one changes
        nothing, except a suspect's, whose merge confirms the suspicion.

        Raises:
            MalformedMessage: the state was not valid; nothing changed.
        """
        layout = view.state_layout(self._members, self._snapshot, self._entry)
        state = codec.decode_state_changes(data, *layout)
        if state is None:
            try:
                state = codec.decode_state(data)
            except codec.MalformedMessage:
                self.stats["malformed_state"] += 1
                raise
        self.stats["push_pull_merged"] += 1
        for ms in state.members:
            if ms.state is ALIVE:
                self._on_alive(now, ms.incarnation, ms.meta, ms.proof)
            elif ms.state is LEFT:
                self._on_dead(now, ms.incarnation, ms.meta.name, ms.meta.name, ms.meta, ms.proof)
            else:  # a remote "dead" only makes us suspect: the member may still refute
                self._on_suspect(now, ms.incarnation, ms.meta.name, self._name)
        for u in state.user:
            self._on_user(now, u.key, u.version, u.payload)

    def answers_to(self, name: str) -> bool:
        """Server side of a TCP ping: whether this node is ``name``."""
        return name == self._name

    # -- application data --------------------------------------------------------------------

    def _on_user(self, now: float, key: str, version: int, payload: bytes,
                 local: bool = False) -> bool:
        current = self._user.get(key)
        if current is not None and version <= current[0]:
            return False
        if not local and self.user_filter is not None and not self.user_filter(key, version,
                                                                               payload):
            self.stats["user_refused"] += 1  # e.g. an alert digest its prober did not sign
            return False
        if current is None and len(self._user) >= _MAX_USER_KEYS:
            self.stats["user_keys_full"] += 1
            return False
        self._user[key] = (version, payload)
        if self._pulling.get(key, -1) <= version:
            self._pulling.pop(key, None)
        inline = len(payload) <= self.config.max_user_inline
        msg = UserData(key, version, payload) if inline else UserNotice(key, version, self._name)
        self._enqueue(_USER_PREFIX + key, msg)
        if not local:
            self._events.append(UserEvent(key, version, payload, now))
        return True

    def _on_notice(self, now: float, src: Addr, msg: UserNotice) -> None:
        current = self._user.get(msg.key)
        if (current is not None and msg.version <= current[0]) or (
                self._pulling.get(msg.key, -1) >= msg.version):
            return
        sender = self._members.get(msg.holder)
        if sender is None or sender.state not in LIVE:
            return
        self._pulling[msg.key] = msg.version
        self._request_stream(now, StreamKind.PUSH_PULL, sender.meta.tcp_addr, sender.meta.name,
                             join=False, pull_key=msg.key)

    # -- streams -----------------------------------------------------------------------------

    def _request_stream(self, now: float, kind: StreamKind, addr: Addr, node: str | None,
                        join: bool, pull_key: str | None = None,
                        deadline: float | None = None, payload: bytes = b"") -> int:
        self._seq += 1
        token = self._seq
        if deadline is None:
            deadline = now + self.config.tcp_timeout
        if kind is StreamKind.PUSH_PULL:
            payload = self.local_state(join)
        request = StreamRequest(token, kind, addr, node, payload, join, deadline)
        self._streams[token] = (request, pull_key)
        self._stream_out.append(request)
        self._schedule(deadline, T_STREAM, token)
        return token

    def _periodic_push_pull(self, now: float) -> None:
        cfg = self.config
        self._next_push_pull = now + timing.push_pull_scale(cfg.push_pull_interval, self._live)
        peers = self._random_members(1)
        if peers:
            m = peers[0]
            self._request_stream(now, StreamKind.PUSH_PULL, m.meta.tcp_addr, m.meta.name,
                                 join=False)

    def _reconnect(self, now: float) -> None:
        """Heal partitions (memberlist #222): retry seeds when alone, else a dead member."""
        cfg = self.config
        self._next_reconnect = now + cfg.reconnect_interval
        expired = [n for n, since in self._gone.items() if now - since > cfg.reconnect_timeout]
        if expired:
            self._reap(now, expired)
        if self._leaving:
            return
        if self._live <= 1 and self._seeds:
            seed = self._seeds[self._rng.randrange(len(self._seeds))]
            self._request_stream(now, StreamKind.PUSH_PULL, seed, None, join=True)
            return
        dead = [n for n in self._gone if self._members[n].state is DEAD
                and n not in self._banned]
        # serf's reconnect: try with probability failed/alive, so big meshes don't storm.
        if dead and self._rng.random() < len(dead) / max(1, self._live):
            m = self._members[dead[self._rng.randrange(len(dead))]]
            self.stats["reconnect_attempts"] += 1
            self._request_stream(now, StreamKind.PUSH_PULL, m.meta.tcp_addr, m.meta.name,
                                 join=False)

    # -- certificates named by reference (see certs) -------------------------------------------

    def _fetch_certs(self, now: float) -> None:
        # a one-off exchange, as patient as a join: a busy peer must not make it fail
        deadline = now + max(self.config.tcp_timeout, self.config.join_timeout)
        for source, refs in self._certs.batches():
            token = self._request_stream(now, StreamKind.CERTS, source, None, join=False,
                                         deadline=deadline, payload=codec.encode_blobs(refs))
            self._certs.started(token, refs)
            self.stats["cert_fetches"] += 1

    def _on_certs(self, now: float, token: int, answer: bytes | None) -> None:
        refs = self._certs.finished(token)
        assert refs is not None
        self._learn_fetched(now, refs, answer)
        self._fetch_certs(now)
