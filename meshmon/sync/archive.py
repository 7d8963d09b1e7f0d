"""The agent's history archive: the aggregator's ``/v1/results``, asked with its certificate.

An agent that knows an aggregator (``[sync]`` URLs, or learnt from members' gossip: the same
list the uploader uses) answers the archive part of a mesh history question
(:mod:`meshmon.query.archive` says which part) by asking the aggregator for the series' rows
in that range. Its own mesh certificate authenticates it (the aggregator grants any mesh
certificate the ``read`` scope) and the aggregator must prove itself as for an upload (the mesh
CA, the ``aggregator`` tag, not revoked).

URLs are tried in order, the last one that answered first; the first that answers is the
answer. The caller bounds the whole by the question's deadline; each request also has its own
timeout, so a black-holed first URL leaves time for the next only when the deadline allows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from meshmon import pki
from meshmon.query.archive import ArchiveRows, ArchiveUnavailable, resolution_for
from meshmon.query.wire import History
from meshmon.sync.client import aggregator_context
from meshmon.sync.reader import UNREACHABLE, AggregatorReader, ReadError, ReaderSetupError

ROWS = 20_000
"""Most rows asked of the aggregator for one archive answer (it may cap them lower, at its
``max_rows``): 200 points from each of 100 probers. Rows come newest first, so a cut keeps the
part next to what the agents hold."""
REQUEST_TIMEOUT = 10.0
"""Seconds for one request (the question's deadline is usually shorter)."""


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _iso(t: float) -> str:
    """``t`` to the microsecond exactly as an upload stores a result's time (``round(t * 1e6)``
    µs, :mod:`meshmon.sync.build`): a bound equal to a stored time lands on it, so ``until``
    (exclusive) leaves out the agent's own oldest result. ``fromtimestamp`` rounds the fraction
    on its own and may land a microsecond off."""
    return (_EPOCH + dt.timedelta(microseconds=round(t * 1e6))).isoformat()


class AggregatorArchive:
    """A :class:`meshmon.query.service.HistoryArchive` over the aggregator(s) in ``urls()``.

    Args:
        urls: the aggregator URLs known now, in order of preference.
        identity: this agent's credentials (its identity at the aggregator).
        trust: the mesh CA and newest CRL (the aggregator's certificate is checked against it).
    """

    def __init__(self, urls: Callable[[], Sequence[str]], identity: pki.NodeIdentity,
                 trust: pki.Trust, timeout: float = REQUEST_TIMEOUT) -> None:  # fmt: skip
        self.urls = urls
        self.identity = identity
        self.trust = trust
        self.timeout = timeout
        self.asked = 0
        """Questions put to the aggregator (for the agent's status)."""
        self.failed = 0
        self._readers: dict[str, AggregatorReader] = {}
        self._crl_number = trust.crl_number
        self._good: str | None = None

    @property
    def where(self) -> str:
        """The URLs, for messages."""
        return ", ".join(self.urls()) or "no aggregator URL known"

    async def _reader(self, url: str) -> AggregatorReader:
        if self.trust.crl_number != self._crl_number:  # a newer CRL: verify servers afresh
            self._crl_number = self.trust.crl_number
            readers, self._readers = self._readers, {}
            for old in readers.values():
                await old.aclose()
        reader = self._readers.get(url)
        if reader is None:
            context = aggregator_context(self.identity, self.trust)
            reader = self._readers[url] = AggregatorReader(url, context, timeout=self.timeout)
        return reader

    async def history(self, question: History) -> ArchiveRows:
        """The series' rows over ``[since, until)``, newest first (see the module docstring).

        Raises:
            ArchiveUnavailable: no URL is known, or none answered.
        """
        urls = list(self.urls())
        if not urls:
            raise ArchiveUnavailable(UNREACHABLE, "no aggregator URL is known")
        if self._good in urls:
            urls.remove(self._good)
            urls.insert(0, self._good)
        until = question.until if question.until is not None else question.since + 1.0
        resolution = resolution_for(question.since, until, question.points)
        self.asked += 1
        failures: list[ReadError] = []
        for url in urls:
            try:
                reader = await self._reader(url)
                data = await reader.get(
                    "/v1/results", check=question.check, target=question.target,
                    start=_iso(question.since), end=_iso(until), resolution=resolution,
                    order="desc", limit=ROWS)  # fmt: skip
            except ReadError as exc:
                failures.append(exc)
                continue
            except ReaderSetupError as exc:  # checked when configured or learnt: a safeguard
                failures.append(ReadError("error", str(exc)))
                continue
            rows = data.get("rows") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                failures.append(ReadError("error", f"{url}/v1/results: an answer without rows"))
                continue
            self._good = url
            return ArchiveRows(url, reader.aggregator, str(data.get("resolution", resolution)),
                               rows, bool(data.get("truncated")))  # fmt: skip
        self.failed += 1
        raise ArchiveUnavailable(failures[0].reason, "; ".join(str(f) for f in failures))

    async def aclose(self) -> None:
        """Close every connection."""
        for reader in self._readers.values():
            await reader.aclose()
        self._readers.clear()
