"""The trio driver of mesh queries: serves ``mm-query`` requests and gathers answers.

Theory of operation
-------------------
Serving: :meth:`QueryService.install` registers the ``mm-query`` request kind on the
transport. The transport has already checked the asker's certificate in the TLS handshake
(mesh CA, not revoked, not expired); :meth:`QueryService.admit` then requires the node to be a
live member (alive or suspect) of this agent's view, announced with this very certificate,
and not revoked by the CRL as it is now. A refused asker gets a refusal answer (and a
rate-limited warning here, counted in :attr:`QueryService.refused`). An admitted question is
answered from the store in a worker thread, at most ``serve_concurrency`` at once, and the
answer is cut to the asker's byte limit (:func:`meshmon.query.answers.fit`).

Asking: :meth:`QueryService.ask` picks the agents a question concerns from the view, runs a
:class:`~meshmon.query.gather.Gather` (the sans-IO bookkeeping) and carries out what it says:
one task per request, each in its own cancel scope, cancelled when the gather expires it. The
asker answers for itself through the same path as a peer (fitted, encoded, checked), so every
answer in an outcome has the same shape. Why an agent is missing:

``refused``      it answered with a refusal, or either side rejected the other's certificate
``unreachable``  no connection, or the stream broke before the answer was complete
``error``        it answered with an error, or an answer that is not a valid answer
``timeout``      no answer by its request limit or the question's deadline

History archive: with :attr:`QueryService.archive` set (the agent sets it once it knows an
aggregator), :meth:`QueryService.envelope` asks it for the part of a ``history`` question's
range that no agent holds, after the agents answered and within as long again as the
question's deadline; an archive that does not answer (or cuts its answer short) makes the
answer ``partial`` and says why under ``archive.missing`` (:mod:`meshmon.query.archive`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshmon import pki
from meshmon.logs import RateLimitedLog
from meshmon.net import PeerRejectedError, PeerUnreachableError, RemoteError, RequestHandler
from meshmon.net.frames import FrameTooLarge
from meshmon.query.wire import (
    KIND,
    MAX_ANSWER_BYTES,
    MIN_ANSWER_BYTES,
    AnswerError,
    History,
    Matrix,
    QueryFormatError,
    Question,
    Refused,
    decode_answer,
    decode_request,
    encode_error,
    encode_refusal,
    encode_request,
)

if TYPE_CHECKING:  # loaded with the first question (see :mod:`meshmon.query`)
    from meshmon.query.archive import ArchiveRows
    from meshmon.query.gather import Gather, Outcome

log = logging.getLogger(__name__)

Address = tuple[str, int]
LIVE = ("alive", "suspect")
"""Member states that may ask and are asked."""
FRAME_SLACK = 256
"""Bytes a response frame adds around an answer body (length prefix, CBOR envelope)."""


@dataclass(frozen=True)
class QueryConfig:
    """Limits of mesh queries; defaults suit a LAN mesh of up to a few thousand agents."""

    timeout: float = 2.0
    """Seconds for a whole question: a person is waiting (the TUI refreshes every second or
    two), and a healthy agent answers from memory in milliseconds."""
    request_share: float = 0.5
    """Each request may take at most this share of ``timeout``, so black-holed peers (whose
    connects hang) free their slots in time for the others to be asked."""
    fanout: int = 16
    """Requests in flight at once: enough to ask 1,000 agents within the deadline at a few ms
    each, few enough to leave the asker's CPU and sockets to its probes."""
    max_bytes: int = 2**20
    """Largest answer per agent (CBOR): ~5,000 latest rows."""
    max_total_bytes: int = 64 * 2**20
    """Bound on all answers of one question: with many agents, each gets
    ``max_total_bytes / agents`` (at least 1 KiB) when that is below ``max_bytes``."""
    serve_concurrency: int = 2
    """Answers computed at once by this agent for askers (in worker threads)."""


@dataclass(frozen=True)
class Peer:
    """A member as the query service needs it."""

    name: str
    tcp: Address
    state: str
    """alive, suspect, dead or left."""
    tags: tuple[str, ...] = ()
    fingerprint: str = ""
    """SHA-256 of the certificate the member announced, hex ("" if unknown)."""


class HistoryArchive(Protocol):
    """Where history older than the agents hold comes from (the aggregator, when one is known).

    :class:`meshmon.sync.archive.AggregatorArchive` implements it over the aggregator's query
    API; :mod:`meshmon.query.archive` says which part of a question it is asked for and what
    becomes of its rows.
    """

    @property
    def where(self) -> str:
        """The aggregator(s) it asks, for messages."""
        ...

    async def history(self, question: History) -> ArchiveRows:
        """The rows of ``question``'s series in its range, newest first.

        Raises:
            ArchiveUnavailable: no aggregator answered (the reason and a sentence).
        """
        ...


def classify(exc: PeerUnreachableError) -> str:
    """``refused`` for a certificate rejection either way, ``error`` for a peer that broke
    the framing (an oversize answer included), else ``unreachable``."""
    from meshmon.query.gather import ERROR, REFUSED, UNREACHABLE

    cause: BaseException | None = exc.__cause__
    while cause is not None:
        if isinstance(cause, PeerRejectedError):
            return REFUSED
        if isinstance(cause, FrameTooLarge):
            return ERROR
        cause = cause.__cause__
    return UNREACHABLE


class QueryTransport(Protocol):
    """What the service needs from :class:`meshmon.net.MeshTransport` (or the in-memory one)."""

    name: str

    async def request(self, addr: Address, kind: str, payload: bytes,
                      timeout: float | None = None,  # noqa: ASYNC109
                      max_answer: int | None = None) -> bytes: ...  # fmt: skip

    def on_request(self, kind: str, handler: RequestHandler) -> None: ...


class QueryService:
    """Serves and asks mesh-wide questions for one agent.

    Args:
        transport: the mesh transport (requests over mTLS).
        view: the current membership view, this agent included, any state.
        answer: this agent's own answer to a question, given a snapshot of the view
            (synchronous; run in a worker thread, so it must not read the live view).
        trust: the mesh trust, to re-check revocation at answer time (None skips it).
        config: limits.
    """

    def __init__(self, transport: QueryTransport, view: Callable[[], Sequence[Peer]],
                 answer: Callable[[Question, Sequence[Peer]], dict[str, Any]],
                 trust: pki.Trust | None = None,
                 config: QueryConfig | None = None) -> None:  # fmt: skip
        self.transport = transport
        self.name = transport.name
        self.view = view
        self.answer = answer
        self.trust = trust
        self.config = config or QueryConfig()
        self.archive: HistoryArchive | None = None
        """Set to serve history beyond the agents' stores (see :class:`HistoryArchive`)."""
        self.refused: dict[str, int] = {}
        """Askers turned away, by reason (not_member, not_live, revoked, other_certificate)."""
        self.served = 0
        self._limiter = trio.CapacityLimiter(self.config.serve_concurrency)
        self._bad = RateLimitedLog(log)

    def install(self) -> None:
        """Serve ``mm-query`` requests on the transport."""
        self.transport.on_request(KIND, self._serve)

    # --- serving ----------------------------------------------------------------------------

    def admit(self, peer: pki.PeerIdentity) -> tuple[str, str] | None:
        """None if ``peer`` may ask, else (reason key, sentence)."""
        if self.trust is not None and self.trust.is_revoked(peer.serial):
            return "revoked", f"the certificate of {peer.name!r} is revoked"
        member = next((p for p in self.view() if p.name == peer.name), None)
        if member is None:
            return "not_member", (f"{peer.name!r} is not a member of {self.name}'s view; only "
                                  "mesh members may ask (join the mesh first)")  # fmt: skip
        if member.state not in LIVE:
            return "not_live", f"{peer.name!r} is {member.state} in {self.name}'s view"
        if member.fingerprint and peer.fingerprint and member.fingerprint != peer.fingerprint:
            return "other_certificate", (f"{peer.name!r} asked with a certificate other than "
                                         "the one it announced to the mesh")  # fmt: skip
        return None

    async def _serve(self, peer: pki.PeerIdentity, body: bytes) -> bytes:
        refusal = self.admit(peer)
        if refusal is not None:
            key, sentence = refusal
            self.refused[key] = self.refused.get(key, 0) + 1
            self._bad.warning(f"refused-{key}", "refused a mesh query: %s", sentence)
            await trio.lowlevel.checkpoint()
            return encode_refusal(sentence)
        try:
            question, limit = decode_request(body)
        except QueryFormatError as exc:
            self._bad.warning("malformed", "malformed mesh query from %s: %s", peer.name, exc)
            await trio.lowlevel.checkpoint()
            return encode_error(f"malformed question: {exc}")
        self.served += 1
        return await self._answer_encoded(question, limit)

    async def _answer_encoded(self, question: Question, limit: int) -> bytes:
        from meshmon.query.answers import fit

        peers = list(self.view())  # a snapshot taken in the trio thread

        def work() -> bytes:
            return fit(question.KIND, self.answer(question, peers), limit)

        return await trio.to_thread.run_sync(work, limiter=self._limiter, abandon_on_cancel=True)

    # --- asking -------------------------------------------------------------------------------

    def targets(self, question: Question) -> list[Peer]:
        """The live members ``question`` goes to: this agent first, then by name."""
        peers = [p for p in self.view() if p.state in LIVE or p.name == self.name]
        if isinstance(question, Matrix):
            peers = [p for p in peers if question.tag in p.tags]
        return sorted(peers, key=lambda p: (p.name != self.name, p.name))

    def per_agent_bytes(self, agents: int, max_bytes: int | None = None) -> int:
        """The answer limit for each of ``agents`` (see :class:`QueryConfig`)."""
        wanted = self.config.max_bytes if max_bytes is None else max_bytes
        share = self.config.max_total_bytes // max(1, agents)
        return max(MIN_ANSWER_BYTES, min(wanted, share, MAX_ANSWER_BYTES))

    async def ask(self, question: Question, timeout: float | None = None,  # noqa: ASYNC109
                  max_bytes: int | None = None) -> Outcome:  # fmt: skip
        """Ask every agent ``question`` concerns; return what came back by the deadline."""
        from meshmon.query.gather import Gather

        cfg = self.config
        limit = cfg.timeout if timeout is None else timeout
        peers = {p.name: p for p in self.targets(question)}
        per_agent = self.per_agent_bytes(len(peers), max_bytes)
        body = encode_request(question, per_agent)
        gather = Gather(peers, trio.current_time(), limit, limit * cfg.request_share, cfg.fanout)
        scopes: dict[str, trio.CancelScope] = {}
        wake = trio.Event()

        async def one(peer: Peer, scope: trio.CancelScope) -> None:
            with scope:
                await self._ask_one(gather, peer, question, body, per_agent, limit)
            wake.set()

        async with trio.open_nursery() as nursery:
            while not gather.done:
                for name in gather.take_starts(trio.current_time()):
                    scopes[name] = trio.CancelScope()
                    nursery.start_soon(one, peers[name], scopes[name])
                with trio.move_on_at(gather.next_deadline()):
                    await wake.wait()
                wake = trio.Event()
                for name in gather.tick(trio.current_time()):
                    scopes[name].cancel()
        return gather.outcome

    async def _ask_one(self, gather: Gather, peer: Peer, question: Question, body: bytes,
                       per_agent: int, limit: float) -> None:  # fmt: skip
        from meshmon.query.answers import check_answer
        from meshmon.query.gather import ERROR, REFUSED

        name = peer.name
        try:
            if name == self.name:
                raw = await self._answer_encoded(question, per_agent)
            else:
                raw = await self.transport.request(peer.tcp, KIND, body, timeout=limit + 1.0,
                                                   max_answer=per_agent + FRAME_SLACK)
            data = check_answer(question.KIND, decode_answer(raw))
        except Refused as exc:
            gather.failed(name, REFUSED, f"{name} refused: {exc}")
        except PeerUnreachableError as exc:
            gather.failed(name, classify(exc), str(exc))
        except (RemoteError, AnswerError) as exc:
            gather.failed(name, ERROR, f"{name}: {exc}")
        except QueryFormatError as exc:
            gather.failed(name, ERROR, f"{name} sent a malformed answer: {exc}")
        except Exception as exc:  # our own answer failed (e.g. the store): say so, go on
            log.exception("answering a %s question locally failed", question.KIND)
            gather.failed(name, ERROR, f"{name}: {type(exc).__name__}: {exc}")
        else:
            gather.answered(name, data)

    async def envelope(self, question: Question, timeout: float | None = None,  # noqa: ASYNC109
                       max_bytes: int | None = None) -> dict[str, Any]:  # fmt: skip
        """Ask, and shape the outcome as the control API's JSON (see :mod:`meshmon.query`)."""
        started = time.monotonic()
        outcome = await self.ask(question, timeout, max_bytes)
        out = render(question, outcome, self.name, (time.monotonic() - started) * 1000)
        if isinstance(question, Matrix):
            out["agents"] = sorted({p.name for p in self.view() if question.tag in p.tags})
        elif isinstance(question, History):
            limit = self.config.timeout if timeout is None else timeout
            out["archive"] = None
            if self.archive is not None:
                out["archive"] = await self._archive(self.archive, question, outcome, limit)
                got = out["archive"]
                if got is not None and (got["missing"] is not None or got["truncated"]):
                    out["partial"] = True
            out["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        return out

    async def _archive(self, archive: HistoryArchive, question: History, outcome: Outcome,
                       limit: float) -> dict[str, Any] | None:  # fmt: skip
        """Ask the archive for the part of ``question`` the agents lack, within ``limit``
        seconds; its envelope entry (None: the agents hold the whole range)."""
        from meshmon.query.archive import (
            ArchiveUnavailable,
            archive_answers,
            archive_range,
            render_archive,
        )

        span = archive_range(question, outcome.answers, time.time())
        if span is None:
            return None
        since, cut = span
        rows: ArchiveRows | None = None
        with trio.move_on_after(limit):
            try:
                rows = await archive.history(dataclasses.replace(question, since=since,
                                                                 until=cut))  # fmt: skip
            except ArchiveUnavailable as exc:
                return render_archive(archive.where, since, cut, missing=exc)
        if rows is None:
            return render_archive(archive.where, since, cut, missing=ArchiveUnavailable(
                "timeout", f"the aggregator ({archive.where}) did not answer within "
                f"{limit:g}s"))  # fmt: skip
        found = rows
        answers = await trio.to_thread.run_sync(
            lambda: archive_answers(found.rows, outcome.answers, question.points, since, cut))
        return render_archive(archive.where, since, cut, rows=rows, answers=answers)


def render(question: Question, outcome: Outcome, asker: str, elapsed_ms: float,
           ) -> dict[str, Any]:  # fmt: skip
    """The JSON envelope of an outcome (question-specific extras added by the caller)."""
    out: dict[str, Any] = {
        "question": question.KIND, "asker": asker, "asked": len(outcome.asked),
        "answered": len(outcome.answers), "partial": outcome.partial,
        "missing": {n: m.reason for n, m in sorted(outcome.missing.items())},
        "details": {n: m.detail for n, m in sorted(outcome.missing.items())},
        "truncated": outcome.truncated, "elapsed_ms": round(elapsed_ms, 1),
        "answers": dict(sorted(outcome.answers.items())),
    }  # fmt: skip
    if isinstance(question, Matrix):
        out.update(tag=question.tag, window_s=question.window)
    elif isinstance(question, History):
        out.update(check=question.check, target=question.target, since=question.since,
                   until=question.until, points=question.points)  # fmt: skip
    return out
