"""The membership core measures each member's round trip from its direct pings (the TUI's RTT
column): the simulated link's delay there and back, nothing for itself."""

from __future__ import annotations

import pytest

from meshmon.membership import lan
from meshmon.sim import LinkModel, Simulation, start_mesh


@pytest.mark.parametrize("delay", [0.002, 0.025])
def test_direct_pings_measure_the_round_trip(delay: float) -> None:
    sim = Simulation(5, link=LinkModel(delay=delay, jitter=0.0))
    names = start_mesh(sim, lan(), 4, settle=30.0)
    for core in sim.running():
        assert set(core.rtt) == set(names) - {core.name}
        for rtt in core.rtt.values():
            assert rtt == pytest.approx(2 * delay, abs=1e-6)


def test_an_indirect_answer_measures_nothing() -> None:
    link = LinkModel(delay=0.001, jitter=0.0)
    sim = Simulation(6, link=link)
    names = start_mesh(sim, lan(), 4, settle=30.0)
    watcher = sim.core(names[0])
    before = dict(watcher.rtt)
    link.delay = 0.3  # slower than the direct probe timeout: acks come back by way of others
    sim.run_for(10.0)
    # every member is still alive, and no round trip above the probe timeout was recorded
    assert all(watcher.member(n).state.name == "ALIVE" for n in names[1:])
    assert all(rtt < lan().probe_timeout for rtt in watcher.rtt.values())
    assert watcher.rtt.keys() == before.keys()
