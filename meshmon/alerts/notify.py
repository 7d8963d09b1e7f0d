"""Telling people: receivers (webhook, Alertmanager, command) and a retrying outbox.

Theory of operation
-------------------
The incident book (:mod:`meshmon.alerts.incidents`) decides *what* to say; this module says it.
Every receiver gets every notification of this node, in order per incident (a ``resolved`` is
never sent before that incident's ``firing``). A delivery that fails is retried with
exponential backoff and full jitter (1 s doubling to ``max_backoff``), for as long as the
incident matters; the book learns of a delivery once *every* receiver has accepted it, and
that fact travels in gossip so a new owner does not repeat it.

Alertmanager forgets an alert that is not re-sent (after its ``resolve_timeout``), so firing
incidents are re-posted to it every ``alertmanager_repeat``; to Alertmanager that is the same
alert (same labels), not a new notification. Its grouping, silences and routing then apply.

:class:`Outbox` is plain bookkeeping (what is due when); :func:`deliver` does the I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshmon.alerts.incidents import Event, Incident, Notification
from meshmon.configload import FieldError, Seconds

log = logging.getLogger("meshmon.alerts")


@dataclass(frozen=True)
class WebhookConfig:
    """POST a JSON object per notification (see :func:`webhook_body`)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    """Extra request headers, e.g. ``Authorization``."""
    timeout: Seconds = Seconds(10.0)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise FieldError("url", f"{self.url!r} is not an http:// or https:// URL")


@dataclass(frozen=True)
class AlertmanagerConfig:
    """Prometheus Alertmanager's v2 API (``POST /api/v2/alerts``)."""

    url: str
    """Alertmanager's base URL, e.g. ``http://alertmanager:9093``."""
    timeout: Seconds = Seconds(10.0)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise FieldError("url", f"{self.url!r} is not an http:// or https:// URL")


@dataclass(frozen=True)
class CommandConfig:
    """Run a program per notification: the JSON body on stdin, ``MESHMON_*`` in its
    environment; exit status 0 means delivered."""

    argv: tuple[str, ...]
    timeout: Seconds = Seconds(30.0)

    def __post_init__(self) -> None:
        if not self.argv:
            raise FieldError("argv", "needs the program to run, e.g. [\"/usr/local/bin/page\"]")


Receiver = WebhookConfig | AlertmanagerConfig | CommandConfig


def receiver_name(r: Receiver) -> str:
    """How logs and status name a receiver."""
    if isinstance(r, CommandConfig):
        return f"command {r.argv[0]}"
    kind = "alertmanager" if isinstance(r, AlertmanagerConfig) else "webhook"
    return f"{kind} {r.url}"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def summary(inc: Incident, event: Event) -> str:
    """One line a human reads first."""
    rule, check, target = inc.key
    if inc.kind == "vantage":
        return (f"prober {target} is impaired: most of its targets failed at once"
                if event == "firing" else f"prober {target} recovered")
    agreed = f" ({len(inc.probers)} probers agree: {', '.join(inc.probers)})" if inc.probers else ""
    return (f"{rule}: {target} ({check}) is down{agreed}" if event == "firing"
            else f"{rule}: {target} ({check}) recovered")  # fmt: skip


def webhook_body(n: Notification, severity: str, labels: dict[str, str]) -> dict[str, Any]:
    """The JSON a webhook receives. ``incident_id`` is stable across hand-overs."""
    inc = n.incident
    rule, check, target = inc.key
    return {
        "incident_id": inc.id, "event": n.event, "kind": inc.kind,
        "rule": rule if inc.kind == "target" else "vantage-impaired",
        "check": check, "target": target, "severity": severity, "labels": labels,
        "opened_at": _iso(inc.opened_at),
        "resolved_at": _iso(inc.resolved_at) if inc.resolved_at is not None else None,
        "probers": list(inc.probers), "notifier": inc.notifier, "summary": summary(inc, n.event),
    }  # fmt: skip


def alertmanager_body(n: Notification, severity: str, labels: dict[str, str],
                      now: float) -> list[dict[str, Any]]:  # fmt: skip
    """One alert for Alertmanager's ``POST /api/v2/alerts``; labels identify the incident."""
    inc = n.incident
    rule, check, target = inc.key
    alert_labels = {**labels, "alertname": rule if inc.kind == "target" else "VantageImpaired",
                    "severity": severity, "meshmon_check": check, "meshmon_target": target,
                    "meshmon_kind": inc.kind}  # fmt: skip
    if inc.kind == "vantage":
        alert_labels["meshmon_prober"] = target
    alert: dict[str, Any] = {
        "labels": alert_labels,
        "annotations": {"summary": summary(inc, "firing"), "incident_id": inc.id,
                        "probers": ", ".join(inc.probers), "notifier": inc.notifier},
        "startsAt": _iso(inc.opened_at),
    }  # fmt: skip
    if n.event == "resolved":
        alert["endsAt"] = _iso(inc.resolved_at if inc.resolved_at is not None else now)
    return [alert]


@dataclass
class Pending:
    """One notification still to deliver to one receiver."""

    receiver: int
    note: Notification
    attempts: int = 0
    due: float = 0.0
    last_error: str = ""


@dataclass
class Outbox:
    """What must still be delivered to whom, and when to try next (no I/O)."""

    receivers: int
    max_backoff: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    queue: list[Pending] = field(default_factory=list)
    _outstanding: dict[tuple[str, Event], set[int]] = field(default_factory=dict)

    def add(self, note: Notification, now: float) -> None:
        """Queue ``note`` for every receiver."""
        key = (note.incident.id, note.event)
        if key in self._outstanding:
            return
        self._outstanding[key] = set(range(self.receivers))
        self.queue.extend(Pending(r, note, due=now) for r in range(self.receivers))

    def due(self, now: float) -> list[Pending]:
        """Deliveries to attempt now: the first pending one per (receiver, incident)."""
        seen: set[tuple[int, str]] = set()
        out = []
        for p in self.queue:
            k = (p.receiver, p.note.incident.id)
            if k in seen:
                continue  # an earlier notification of this incident goes first
            seen.add(k)
            if p.due <= now:
                out.append(p)
        return out

    def next_due(self) -> float | None:
        """When something is next due."""
        return min((p.due for p in self.queue), default=None)

    def succeeded(self, p: Pending) -> bool:
        """Record a delivery; True when every receiver now has this notification."""
        self.queue.remove(p)
        key = (p.note.incident.id, p.note.event)
        left = self._outstanding.get(key, set())
        left.discard(p.receiver)
        if not left:
            self._outstanding.pop(key, None)
            return True
        return False

    def failed(self, p: Pending, now: float, error: str) -> float:
        """Record a failure; returns the delay until the next attempt."""
        p.attempts += 1
        p.last_error = error
        delay = self.rng.uniform(0, min(self.max_backoff, 2.0 ** p.attempts))
        p.due = now + max(delay, 0.5)
        return delay

    def drop_incident(self, incident: str) -> None:
        """Forget deliveries of an incident another node has taken over."""
        self.queue = [p for p in self.queue if p.note.incident.id != incident]
        for key in [k for k in self._outstanding if k[0] == incident]:
            del self._outstanding[key]


class DeliveryError(Exception):
    """A receiver did not accept a notification (the message says why)."""


async def deliver(receiver: Receiver, note: Notification, severity: str,
                  labels: dict[str, str], now: float) -> None:  # fmt: skip
    """Send one notification to one receiver.

    Raises:
        DeliveryError: the receiver refused it or could not be reached.
    """
    import httpx  # only agents with receivers pay for the HTTP client
    import trio

    if isinstance(receiver, CommandConfig):
        body = json.dumps(webhook_body(note, severity, labels)).encode()
        env = {"MESHMON_EVENT": note.event, "MESHMON_INCIDENT": note.incident.id,
               "MESHMON_TARGET": note.incident.key[2], "MESHMON_RULE": note.incident.key[0]}
        import os

        try:
            with trio.fail_after(receiver.timeout):
                proc = await trio.run_process(list(receiver.argv), stdin=body, check=False,
                                              capture_stdout=True, capture_stderr=True,
                                              env={**os.environ, **env})  # fmt: skip
        except (OSError, trio.TooSlowError) as exc:
            raise DeliveryError(f"{receiver.argv[0]}: {exc or 'timed out'}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise DeliveryError(f"{receiver.argv[0]} exited {proc.returncode}: {err[0]}")
        return
    if isinstance(receiver, AlertmanagerConfig):
        url = receiver.url.rstrip("/") + "/api/v2/alerts"
        payload: Any = alertmanager_body(note, severity, labels, now)
        headers: dict[str, str] = {}
    else:
        url, payload, headers = receiver.url, webhook_body(note, severity, labels), receiver.headers
    try:
        async with httpx.AsyncClient(timeout=receiver.timeout) as client:
            resp = await client.post(url, json=payload, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code >= 300:
        raise DeliveryError(f"{url} answered {resp.status_code}: {resp.text[:200]}")


def describe(receivers: Sequence[Receiver]) -> list[str]:
    """Receivers by name, for status and logs."""
    return [receiver_name(r) for r in receivers]
