"""Test-only: run the normal ``meshmon`` CLI, but make the agent announce another identity.

``python -m tests.liar_agent agent run -c FILE`` with ``MESHMON_TEST_ANNOUNCE_AS=NAME`` runs
the unchanged agent code, except that :meth:`meshmon.agent.Agent._meta` claims the node name
``NAME``, and its membership starts at incarnation ``MESHMON_TEST_INCARNATION`` (default 1000,
so that its claim outbids the real member's). Its certificate, keys and everything it signs
stay its own: this is what a member with a valid certificate that lies about who it is looks
like to the rest of the mesh. Nothing in the shipped package reads these variables.
"""

from __future__ import annotations

import dataclasses
import functools
import os

from meshmon import agent, mesh
from meshmon.cli import main
from meshmon.membership import Membership, NodeMeta

_honest_meta = agent.Agent._meta


def _lying_meta(self: agent.Agent) -> NodeMeta:
    return dataclasses.replace(_honest_meta(self), name=os.environ["MESHMON_TEST_ANNOUNCE_AS"])


if __name__ == "__main__":
    agent.Agent._meta = _lying_meta  # type: ignore[method-assign]
    incarnation = int(os.environ.get("MESHMON_TEST_INCARNATION", "1000"))
    mesh.Membership = functools.partial(Membership, incarnation=incarnation)  # type: ignore[attr-defined,assignment]
    main()
