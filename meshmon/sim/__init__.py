"""Deterministic simulator: many sans-IO membership nodes over a fake network, virtual time."""

from meshmon.sim.identities import COMPACT_PROOF_SIZE, PROOF_SIZE, SimAuthenticator, SimIdentities
from meshmon.sim.network import LinkModel, Observer, SimNode, Simulation
from meshmon.sim.scenario import make_meta, node_name, start_mesh

__all__ = ["COMPACT_PROOF_SIZE", "PROOF_SIZE", "LinkModel", "Observer", "SimAuthenticator",
           "SimIdentities", "SimNode", "Simulation", "make_meta", "node_name", "start_mesh"]
