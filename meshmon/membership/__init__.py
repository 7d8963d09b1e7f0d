"""SWIM + Lifeguard membership as a sans-IO core (hashicorp/memberlist's concepts, in Python).

The core never touches sockets or clocks. A driver (the trio transport, or ``meshmon.sim``)
feeds it time and bytes and carries out what it asks for::

    m = Membership(config, local_meta, rng=random.Random(seed), now=now)
    m.join(now, [("10.0.0.1", 7946)])             # seeds: TCP addresses -> push-pull requests
    loop:
        m.handle_datagram(now, src_addr, plaintext)   # may raise MalformedMessage (no change)
        m.tick(now)                                   # at or after m.next_deadline()
        for addr, plaintext in m.take_datagrams(): seal and send over UDP (each <= budget)
        for req in m.take_stream_requests():          # StreamRequest: run over mTLS TCP
            PUSH_PULL: send req.payload, read peer state -> m.stream_result(now, req.token,
                       True, peer_state); on failure m.stream_result(now, req.token, False)
            PING:      ask the peer whether it is req.node -> m.stream_result(now, tok, ok)
            CERTS:     send req.payload to the node at UDP req.addr (its TCP side), read the
                       certificates it answers -> m.stream_result(now, req.token, True, data)
        for event in m.take_events(): MemberEvent(kind, member, time) / UserEvent(...)
    server side of push-pull:  m.merge_remote_state(now, their_state); reply m.local_state()
    server side of TCP ping:   reply ok iff m.answers_to(name)
    server side of CERTS:      reply m.certificates(request)
    every mTLS peer's certificate (DER): m.learn_certificate(now, der)
    m.leave(now); tick until m.leave_done (or a deadline); m.expel(now, name) on revocation
    m.publish(now, key, version, payload) disseminates application data (e.g. "crl")
    m.refused (counts by reason), m.take_refusals(): self-statements refused for lack of proof

Pass ``auth=`` an :class:`Authenticator` (``identity.CertAuthenticator`` in an agent): a node's
alive and leave then count only with a proof by the node itself (see ``auth``).

Addresses are ``(ip, port)`` tuples. Results that arrive after ``req.deadline`` are ignored.
"""

from meshmon.membership.auth import REASONS, Authenticator, Refusal, Unchecked
from meshmon.membership.codec import (
    MalformedMessage,
    decode_datagram,
    decode_state,
    encode_datagram,
    encode_message,
    encode_state,
)
from meshmon.membership.config import MembershipConfig, lan, local, wan
from meshmon.membership.core import Membership
from meshmon.membership.events import (
    Event,
    EventKind,
    Member,
    MemberEvent,
    StreamKind,
    StreamRequest,
    UserEvent,
)
from meshmon.membership.messages import Addr, NodeMeta, State

__all__ = [
    "REASONS",
    "Addr",
    "Authenticator",
    "Event",
    "EventKind",
    "MalformedMessage",
    "Member",
    "MemberEvent",
    "Membership",
    "MembershipConfig",
    "NodeMeta",
    "Refusal",
    "State",
    "StreamKind",
    "StreamRequest",
    "Unchecked",
    "UserEvent",
    "decode_datagram",
    "decode_state",
    "encode_datagram",
    "encode_message",
    "encode_state",
    "lan",
    "local",
    "wan",
]
