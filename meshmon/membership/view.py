"""A node's view of the members, shared copy-on-write with other views of the same snapshot.

Theory of operation
-------------------
Every member keeps a full view of the mesh: N entries on each of N nodes. One agent holds one
view, but the simulator runs thousands of cores in one process, and 10,000 plain dicts of
10,000 entries (plus a probe list each) are 4 GB. Yet the views are nearly identical: a warm
start hands every core the same :class:`Snapshot` of alive members, and afterwards each view
departs from it only in the few members whose state changed.

So a view stores only its departures. :class:`MemberMap` is a mapping over a shared, never
mutated snapshot dict plus this view's own entries (added or changed) and the snapshot names it
removed. It iterates exactly as a dict built by ``dict(snapshot)`` and then changed the same
way would: snapshot order with changed entries in place, removed ones skipped, and added ones
(including a removed name added again) at the end in the order they were added.
:class:`ProbeOrder` does the same for the probing order: the snapshot's names less this node's
own, plus the positions the core changed since (new members are swapped in at random places).
A shuffle or a reap replaces it with a plain list.

A plain view (no snapshot) is the same :class:`MemberMap` with an empty base, so the core has
one code path.

Push-pull works on the same principle. The snapshot encodes its members' state entries once
(:meth:`Snapshot.encoded`); a view's state is that encoding in runs between its departures,
and views that depart alike share one encoded state (:func:`encode_state`). Merging a peer's
state compares it with the snapshot's encoding and decodes only what differs
(:func:`state_layout`, :func:`~meshmon.membership.codec.decode_state_changes`): an entry equal
to the receiver's changes nothing, unless it is a suspect's (merging one confirms it). So
10,000 push-pulls between views that mostly agree cost comparisons, not 10^8 decoded entries.
"""

from __future__ import annotations

import itertools
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from typing import overload

from meshmon.membership import codec
from meshmon.membership.events import Member
from meshmon.membership.messages import MemberState, State, UserData

_EMPTY: dict[str, Member] = {}


class Snapshot:
    """Alive members (and their proofs) that many views start from; immutable once built.

    Args:
        members: the members by name, in the order views iterate them.
        proofs: each member's proof of its alive statement, in full form.
    """

    __slots__ = ("_encoded", "index", "members", "names", "proofs", "states")

    def __init__(self, members: Mapping[str, Member],
                 proofs: Mapping[str, bytes] | None = None) -> None:
        self.members: dict[str, Member] = dict(members)
        self.names: tuple[str, ...] = tuple(self.members)
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.names)}
        self.proofs: Mapping[str, bytes] = proofs if proofs is not None else {}
        self._encoded: tuple[memoryview, list[int]] | None = None
        self.states: dict[object, bytes] = {}
        """A cache: the last few push-pull states encoded from this snapshot, by departures."""

    def encoded(self) -> tuple[memoryview, list[int]]:
        """Every member's push-pull state entry, one after another, and where each starts
        (entry ``i`` is ``joined[offsets[i]:offsets[i + 1]]``); encoded once, shared."""
        if self._encoded is None:
            proofs = self.proofs
            entries = [codec.encode_member_state(MemberState(
                m.meta, m.incarnation, m.state,
                proofs.get(name, b"") if m.state in _PROVEN else b""))
                for name, m in self.members.items()]
            offsets = [0, *itertools.accumulate(map(len, entries))]
            self._encoded = (memoryview(b"".join(entries)), offsets)
        return self._encoded


_PROVEN = (State.ALIVE, State.LEFT)
_STATES_KEPT = 4


class MemberMap(MutableMapping[str, Member]):
    """Members by name: a shared snapshot's plus this view's departures from it.

    Args:
        base: the snapshot's members (never modified here; empty for a plain view).
    """

    __slots__ = ("_base", "_hidden", "_len", "_own")

    def __init__(self, base: Mapping[str, Member] = _EMPTY) -> None:
        self._base = base
        self._own: dict[str, Member] = {}  # added or changed here
        self._hidden: set[str] = set()  # base names removed (then perhaps added again: own)
        self._len = len(base)

    def __len__(self) -> int:
        return self._len

    def __contains__(self, name: object) -> bool:
        return name in self._own or (name not in self._hidden and name in self._base)

    def get(self, name: str, default: Member | None = None) -> Member | None:  # type: ignore[override]
        m = self._own.get(name)
        if m is not None:
            return m
        if name in self._hidden:
            return default
        return self._base.get(name, default)

    def __getitem__(self, name: str) -> Member:
        m = self.get(name)
        if m is None:
            raise KeyError(name)
        return m

    def __setitem__(self, name: str, m: Member) -> None:
        own = self._own
        if name not in own and (name in self._hidden or name not in self._base):
            self._len += 1
        own[name] = m

    def __delitem__(self, name: str) -> None:
        m = self._own.pop(name, None)
        if name in self._base and name not in self._hidden:
            self._hidden.add(name)
        elif m is None:
            raise KeyError(name)
        self._len -= 1

    def __iter__(self) -> Iterator[str]:
        if not self._base:
            return iter(self._own)
        return (name for name, _ in self.items())

    def values(self) -> Iterable[Member]:  # type: ignore[override]
        if not self._base:
            return self._own.values()
        return (m for _, m in self.items())

    def items(self) -> Iterable[tuple[str, Member]]:  # type: ignore[override]
        """``(name, member)`` in dict order (see the module docstring)."""
        if not self._base:
            return self._own.items()
        return self._items()

    def _items(self) -> Iterator[tuple[str, Member]]:
        own, hidden = self._own, self._hidden
        for name, m in self._base.items():
            if name not in hidden:
                yield name, own.get(name, m)
        yield from self.added()

    def added(self) -> Iterator[tuple[str, Member]]:
        """Entries not in the snapshot (or removed from it and added again), in order."""
        base, hidden = self._base, self._hidden
        for name, m in self._own.items():
            if name in hidden or name not in base:
                yield name, m

    def changed(self) -> Iterator[tuple[str, Member]]:
        """Snapshot entries this view holds in another version (in no particular order)."""
        base, hidden = self._base, self._hidden
        for name, m in self._own.items():
            if name in base and name not in hidden:
                yield name, m

    @property
    def removed(self) -> set[str]:
        """Snapshot names this view removed (some may have been added again, at the end)."""
        return self._hidden


class ProbeOrder:
    """The snapshot's names but ``own``, as a list that records only the positions changed.

    Supports what the core does to its probe list between shuffles: ``len``, indexing,
    assigning a position and appending. ``list(order)`` gives a plain list.
    """

    __slots__ = ("_base", "_changed", "_extra", "_hole", "_n")

    def __init__(self, names: tuple[str, ...], hole: int | None) -> None:
        self._base = names
        self._hole = len(names) if hole is None else hole
        self._n = len(names) - (hole is not None)  # positions that come from the snapshot
        self._changed: dict[int, str] = {}
        self._extra: list[str] = []

    def __len__(self) -> int:
        return self._n + len(self._extra)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if type(i) is int and i >= 0:  # the core's way (gossip targets, probes): fast
            name = self._changed.get(i)
            if name is not None:
                return name
            if i < self._n:
                return self._base[i if i < self._hole else i + 1]
            return self._extra[i - self._n]
        if isinstance(i, slice):
            return list(self)[i]
        if i < 0:
            i += len(self)
        name = self._changed.get(i)
        if name is not None:
            return name
        if 0 <= i < self._n:
            return self._base[i if i < self._hole else i + 1]
        return self._extra[i - self._n]

    def __setitem__(self, i: int, name: str) -> None:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < self._n:
            self._changed[i] = name
        else:
            self._extra[i - self._n] = name

    def append(self, name: str) -> None:
        """Add ``name`` at the end."""
        self._extra.append(name)

    def __iter__(self) -> Iterator[str]:
        base, hole, changed = self._base, self._hole, self._changed
        for i in range(self._n):
            name = changed.get(i)
            yield name if name is not None else base[i if i < hole else i + 1]
        yield from self._extra


Entry = Callable[[str, Member], bytes]
"""Encodes a view's entry for a member (with the proof the view holds for it)."""


def _departures(members: MemberMap, snapshot: Snapshot, entry: Entry
                ) -> list[tuple[int, bytes]]:
    """``(position, entry)`` of the snapshot's members that this view holds otherwise
    (``b""``: removed), by position; a changed entry that encodes as the snapshot's is not."""
    joined, offsets = snapshot.encoded()
    index = snapshot.index
    out = []
    for name, m in members.changed():
        i = index[name]
        encoded = entry(name, m)
        if joined[offsets[i]:offsets[i + 1]] != encoded:
            out.append((i, encoded))
    out += [(index[name], b"") for name in members.removed]
    out.sort(key=lambda departure: departure[0])
    return out


def encode_state(members: MemberMap, snapshot: Snapshot | None, entry: Entry, join: bool,
                 user: tuple[UserData, ...]) -> bytes:
    """A view's push-pull state (:func:`~meshmon.membership.codec.encode_state`'s bytes).

    A snapshot-backed view is the snapshot's encoding in runs between its departures, then
    the entries it added; views that depart alike share the result (the snapshot keeps the
    last few), so a mesh whose views agree encodes its state once, not once per push-pull.
    """
    if snapshot is None:
        entries = [entry(name, m) for name, m in members.items()]
        return codec.encode_state_entries(join, entries, len(members), user)
    departures = _departures(members, snapshot, entry)
    added = [entry(name, m) for name, m in members.added()]
    key = (join, tuple(departures), tuple(added), user)
    state = snapshot.states.get(key)
    if state is None:
        joined, offsets = snapshot.encoded()
        pieces: list[bytes | memoryview] = []
        start = 0
        for i, piece in departures:
            pieces += (joined[offsets[start]:offsets[i]], piece)
            start = i + 1
        pieces.append(joined[offsets[start]:])
        pieces += added
        state = codec.encode_state_entries(join, pieces, len(members), user)
        snapshot.states[key] = state
        if len(snapshot.states) > _STATES_KEPT:
            del snapshot.states[next(iter(snapshot.states))]
    return state


Layout = tuple[bytes | memoryview, Sequence[int], Sequence[str], Collection[int],
               Callable[[str], int | None]]
"""What :func:`~meshmon.membership.codec.decode_state_changes` compares a remote state with."""


def state_layout(members: MemberMap, snapshot: Snapshot | None, entry: Entry) -> Layout:
    """A view's entries as :func:`~meshmon.membership.codec.decode_state_changes` takes them.

    A snapshot-backed view is compared with the snapshot's encoding, its departures left
    unmatched (a remote entry there is merged): nothing of N size is encoded. A plain view
    encodes its entries (each kept until its member changes). Suspects are always
    unmatched: merging one confirms the suspicion.
    """
    if snapshot is not None:
        joined, offsets = snapshot.encoded()
        # A suspect's entry departs from the snapshot (its suspicion started here), and a
        # remote entry equal to an unchanged snapshot entry changes nothing.
        unmatched = {i for i, _ in _departures(members, snapshot, entry)}
        return joined, offsets, snapshot.names, unmatched, snapshot.index.get
    names = list(members)
    entries = [entry(name, m) for name, m in members.items()]
    suspects = {i for i, m in enumerate(members.values()) if m.state is State.SUSPECT}
    positions = {name: i for i, name in enumerate(names)}
    return (b"".join(entries), [0, *itertools.accumulate(map(len, entries))], names,
            suspects, positions.get)
