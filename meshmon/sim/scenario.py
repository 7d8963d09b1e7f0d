"""Helpers to build simulated meshes: node names, metadata, and a mesh joined through a seed."""

from __future__ import annotations

from meshmon.membership import MembershipConfig, NodeMeta
from meshmon.sim.network import Simulation


def node_name(i: int) -> str:
    """The conventional name of simulated node ``i``."""
    return f"n{i:05d}"


def make_meta(i: int, port: int = 7946, **overrides: object) -> NodeMeta:
    """Metadata for simulated node ``i`` at 10.x.y.z (addresses unique up to 16 million)."""
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    fields: dict[str, object] = {"name": node_name(i), "address": ip, "udp_port": port,
                                 "tcp_port": port, "version": "sim"}
    fields.update(overrides)
    return NodeMeta(**fields)  # type: ignore[arg-type]


def start_mesh(sim: Simulation, config: MembershipConfig, n: int, *, warm: bool = False,
               settle: float = 0.0) -> list[str]:
    """Start ``n`` nodes: joined through node 0 by push-pull, or warm-started (no join traffic).

    Returns the node names. ``settle`` runs the simulation that long afterwards.
    """
    metas = [make_meta(i) for i in range(n)]
    if warm:
        sim.warm_start(config, metas)
    else:
        sim.add_node(config, metas[0])
        seed = (metas[0].tcp_addr,)
        for meta in metas[1:]:
            sim.add_node(config, meta, seeds=seed)
    if settle:
        sim.run_for(settle)
    return [m.name for m in metas]
