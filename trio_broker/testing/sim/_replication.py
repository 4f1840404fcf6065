"""Several replication groups per broker: each group its own consensus group (a ``RaftNode``
per broker, its own durable storage, state machine, disk writes, proposals ledger and
checker), every broker hosting every group.

The brokers' lot is shared by their groups: a crash or a restart stops or starts all of a
broker's groups at once (and its disk's faults strike each group's log at that crash), a
partition cuts every group's messages between the same brokers, and the clock of a broker
ticks all its groups. Each message on the wire carries its group (:class:`GroupMessage`, and the
``group`` of client requests and answers); a queue belongs to one group (:func:`queues_of`).

The simulation's per-group state is that of :attr:`GroupsMixin.g`, the group being stepped:
``sim.nodes``, ``sim.storage``, ``sim.apps``, ``sim.checker`` and the rest of the per-group
attributes are ``sim.g``'s (see :data:`PER_GROUP`), so every component's step runs unchanged
on one group at a time, inside ``with sim.in_group(k):`` or ``for _ in sim.each_group():``.
Outside any such block the group is 0, the one that also carries the consumer-group and
lifecycle workloads (their queues are group 0's) and the operator's membership changes.

With one group a seed runs exactly the schedule it ran before groups existed (the same trace
hash: ``tests/sim/test_sim_replication_groups.py`` checks it on recorded seeds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from ..._core._proposals import Proposals

GROUP_IDS = tuple(f"G-{k}" for k in range(10))
"""The groups' ids, in their (sorted) order: group ``k`` is ``GROUP_IDS[k]``."""


def queues_of(k: int) -> tuple[str, str]:
    """The log-pattern clients' two queues of group ``k`` (group 0's are ``QUEUES``)."""
    return (f"Q-SIM{k}A", f"Q-SIM{k}B")


@attrs.frozen
class GroupMessage:
    """A consensus message on the wire, with the group it belongs to (one connection between
    two brokers carries every group's messages, as in the runtime)."""

    group: int
    message: Any
    connection: int = 0
    """With the links' connections (``Simulation.links``): the start of the receiver its
    link was connected to, and the step it was sent at (as a :class:`~._wire.Frame`)."""
    sent_at: int = 0


@attrs.define
class ReplicationGroup:
    """One consensus group's state across the brokers (each dict is keyed by broker id)."""

    index: int
    queues: tuple[str, ...]
    storage: dict[int, Any]
    node_rng: dict[int, Any]
    """Each broker's stream for this group: it seeds the core's ``rng`` at every start."""
    nodes: dict[int, Any] = attrs.field(factory=dict)
    apps: dict[int, Any] = attrs.field(factory=dict)
    app_index: dict[int, int] = attrs.field(factory=dict)
    disk: dict[int, Any] = attrs.field(factory=dict)
    ledgers: dict[int, Proposals] = attrs.field(factory=dict)
    proposals: dict[int, int] = attrs.field(factory=dict)
    dirty: set[int] = attrs.field(factory=set)
    leader_terms: dict[int, tuple[int, int | None]] = attrs.field(factory=dict)
    doomed: dict[int, tuple[int, int]] = attrs.field(factory=dict)
    transfers_requested: list[tuple[int, Any]] = attrs.field(factory=list)
    sent_to: dict[int, set[int]] = attrs.field(factory=dict)
    """With ``wire``: each broker's peers it sent this group's messages to since it started
    (the group's links, ``_peer_mux.GroupLinks``: each one's form counts for the group's)."""
    checker: Any = None
    disks: Any = None
    view: dict[str, Any] = attrs.field(factory=dict)
    """What :meth:`GroupsMixin.use_group` sets: ``g`` and the :data:`PER_GROUP` attributes."""

    @property
    def id(self) -> str:
        return GROUP_IDS[self.index]

    def make_view(self) -> None:
        """Once the group is complete (its checker and disks made)."""
        self.view = {"g": self, **{name: getattr(self, name) for name in PER_GROUP}}


PER_GROUP = (
    "storage",
    "nodes",
    "apps",
    "app_index",
    "disk",
    "ledgers",
    "proposals",
    "dirty",
    "checker",
    "disks",
)
"""The simulation's attributes that are the current group's (``sim.g``'s); the group's other
fields are read as ``sim.g.<name>``."""


class _InGroup:
    """``with sim.in_group(k):`` (a plain class: it runs many times per step)."""

    __slots__ = ("before", "group", "sim")

    def __init__(self, sim: GroupsMixin, group: ReplicationGroup) -> None:
        self.sim = sim
        self.group = group

    def __enter__(self) -> ReplicationGroup:
        self.before = self.sim.g
        self.sim.use_group(self.group)
        return self.group

    def __exit__(self, *exc: object) -> None:
        self.sim.use_group(self.before)


class _Stay:
    """``in_group`` with a single group: nothing to switch."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_STAY = _Stay()


class GroupsMixin:
    """The groups and the current one (see the module's docstring)."""

    groups: list[ReplicationGroup]
    g: ReplicationGroup

    def use_group(self, group: ReplicationGroup) -> None:
        """Make ``group`` the current one: the per-group attributes (:data:`PER_GROUP`) become
        its own (plain attributes, set at each switch: they are read far more often than
        the group changes, and never rebound)."""
        if self.g is not group:
            self.__dict__.update(group.view)

    def in_group(self, k: int) -> _InGroup | _Stay:
        """Step group ``k`` within the block (the group before it afterwards)."""
        if len(self.groups) == 1:
            return _STAY  # (the only group is always the current one)
        return _InGroup(self, self.groups[k])

    def each_group(self) -> Iterable[ReplicationGroup]:
        """Every group in turn, each the current one while the loop's body runs (the group
        before the loop afterwards, also when the loop is left early)."""
        if len(self.groups) == 1:
            return self.groups
        return self._each_group()

    def _each_group(self) -> Iterator[ReplicationGroup]:
        before = self.g
        try:
            for group in self.groups:
                self.use_group(group)
                yield group
        finally:
            self.use_group(before)

    @property
    def group_ids(self) -> tuple[str, ...]:
        return GROUP_IDS[: len(self.groups)]

    def group_of_queue(self, q: str) -> int:
        """The group a queue belongs to (the workloads' own queues are group 0's)."""
        return self.queue_group.get(q, 0)

    @property
    def hosts_workers(self) -> bool:
        """Whether the current group carries the consumer-group and lifecycle workloads."""
        return bool(self.workers) and self.g.index == 0
