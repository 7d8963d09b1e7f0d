"""Alerts: rules evaluated by each prober, verdicts agreed across vantage points, one
notification per incident (see :mod:`.evaluate`, :mod:`.quorum`, :mod:`.incidents`)."""

from meshmon.alerts.evaluate import Change, Evaluator, EvaluatorConfig, Observation, VantageChange
from meshmon.alerts.incidents import Incident, IncidentBook, Notification, incident_id
from meshmon.alerts.quorum import Decision, Digest, VerdictBoard, majority, needed_votes
from meshmon.alerts.rules import AlertRule, Silence

__all__ = [
    "AlertRule",
    "Change",
    "Decision",
    "Digest",
    "Evaluator",
    "EvaluatorConfig",
    "Incident",
    "IncidentBook",
    "Notification",
    "Observation",
    "Silence",
    "VantageChange",
    "VerdictBoard",
    "incident_id",
    "majority",
    "needed_votes",
]
