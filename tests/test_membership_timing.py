"""Table tests for the membership timing maths and the config profiles."""

from __future__ import annotations

import dataclasses

import pytest

from meshmon.membership import config as mconfig
from meshmon.membership import timing


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (4, 0, 1.0, 4.0),
        (4, 1, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 1.0, 12.0),
        (4, 10000, 1.0, 16.0),
        (3, 1000, 1.0, 9.0),
        (6, 1000, 5.0, 90.0),
        (4, 50, 1.0, 6.795),
    ],
)
def test_suspicion_timeout(mult: int, n: int, interval: float, expected: float) -> None:
    assert timing.suspicion_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("confirmations", "k", "elapsed", "expected"),
    # memberlist's TestSuspicion_remainingSuspicionTime table (min 2 s, max 30 s).
    [
        (0, 3, 0.0, 30.0),
        (1, 3, 2.0, 14.0),
        (2, 3, 3.0, 4.810),
        (3, 3, 4.0, -2.0),
        (4, 3, 5.0, -3.0),
        (5, 3, 10.0, -8.0),
        (0, 0, 0.0, 2.0),  # too few members to confirm: the minimum at once
    ],
)
def test_remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, expected: float
) -> None:
    got = timing.remaining_suspicion_time(confirmations, k, elapsed, 2.0, 30.0)
    assert got == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [(4, 2, 0), (4, 3, 0), (4, 4, 2), (5, 10, 3), (4, 1, 0)],
)
def test_expected_confirmations(mult: int, n: int, expected: int) -> None:
    assert timing.expected_confirmations(mult, n) == expected


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [(4, 0, 0), (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (4, 1000, 16),
     (4, 10000, 20), (2, 1000, 8)],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert timing.retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(
    ("value", "score", "expected"), [(1.0, 0, 1.0), (1.0, 1, 2.0), (0.5, 7, 4.0)]
)
def test_scale_by_awareness(value: float, score: int, expected: float) -> None:
    assert timing.scale_by_awareness(value, score) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0), (65, 90.0), (128, 90.0), (129, 120.0),
     (10000, 300.0)],
)
def test_push_pull_scale(n: int, expected: float) -> None:
    assert timing.push_pull_scale(30.0, n) == pytest.approx(expected)


def test_expected_detection_time() -> None:
    assert timing.expected_detection_time(1.0, 0.5, 1000) == pytest.approx(14.08)
    assert timing.expected_detection_time(1.0, 0.5, 100) == pytest.approx(10.08)


def test_profiles_match_memberlist() -> None:
    lan = mconfig.lan()
    assert (lan.probe_interval, lan.probe_timeout, lan.gossip_interval, lan.gossip_nodes) == (
        1.0, 0.5, 0.2, 3)
    assert (lan.indirect_checks, lan.suspicion_mult, lan.suspicion_max_timeout_mult) == (3, 4, 6)
    assert (lan.retransmit_mult, lan.push_pull_interval, lan.awareness_max_multiplier) == (
        4, 30.0, 8)
    wan = mconfig.wan()
    assert (wan.probe_interval, wan.probe_timeout, wan.suspicion_mult, wan.gossip_nodes) == (
        5.0, 3.0, 6, 4)
    local = mconfig.local()
    assert (local.probe_timeout, local.indirect_checks, local.retransmit_mult) == (0.2, 1, 2)
    assert set(mconfig.PROFILES) == {"lan", "wan", "local"}
    assert lan.max_datagram_plaintext + mconfig.SEAL_OVERHEAD < mconfig.MAX_DATAGRAM


@pytest.mark.parametrize(
    "override",
    [{"probe_interval": 0}, {"probe_timeout": 2.0}, {"gossip_nodes": 0},
     {"max_datagram_plaintext": 5000}, {"max_user_inline": 2000}],
)
def test_config_rejects_bad_values(override: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="membership"):
        dataclasses.replace(mconfig.lan(), **override)


def test_agent_config_selects_profile_and_overrides() -> None:
    from pathlib import Path

    from meshmon.config import config_from_dict
    from meshmon.configload import ConfigError

    base = {"listen": {"advertise": "127.0.0.2"}}
    cfg = config_from_dict({**base, "mesh": {"profile": "wan", "probe_timeout": "1s",
                                             "lifeguard": False}}, Path("."))
    membership = cfg.mesh.membership()
    assert (membership.probe_interval, membership.probe_timeout) == (5.0, 1.0)
    assert membership.lifeguard is False
    assert config_from_dict(base, Path(".")).mesh.membership() == mconfig.lan()
    with pytest.raises(ConfigError, match=r"mesh\.probe_timeout"):
        config_from_dict({**base, "mesh": {"probe_timeout": "2s"}}, Path("."))
