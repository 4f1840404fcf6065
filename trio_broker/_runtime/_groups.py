"""Several replication groups in one broker process (docs/replication.md, "Several leaders").

A cluster founded with ``--groups N`` has N replication groups beside its cluster group, each
a consensus group of its own with its own log, leader, voters and queues. Where they live is
replicated state of the cluster group, in one of two forms, fixed when the cluster is founded:

- **the cluster map** (stage 2, ``--replication-factor R``, default 3): the cluster group is
  the metadata group, its state holds the :class:`~trio_broker._core._metadata.ClusterMap`,
  and each broker hosts exactly the groups the map places on it (:mod:`._metamap`, which also
  describes the seam the balancer uses);
- **the stage-1 list** (``--replication-factor all``, and every data directory founded before
  the map): :class:`~trio_broker._core._commands.SetGroups` in the cluster group's log; every
  broker hosts every group, the cluster group being one of them, and a joiner joins each.

Each group's replica is a :class:`~._broker.Broker` (today's class, reused) with its own store
and storage worker under ``data_dir/groups/G-XXXXX/``; the cluster group's broker (the
*primary*) owns the listeners, security, the metrics server and the connections, and
:class:`GroupHost` routes what they receive (the routing room, :mod:`._group_routing`):

- client requests by the group their queue id names (``cluster_of_queue``) or their
  ``cluster_id``; a group of the map that this broker does not host answers NOT_LEADER naming
  its leader; CREATE_QUEUE to the group this broker leads with fewest queues; CLUSTER_QUERY
  naming no group about that same group, every answer listing ``groups``;
- a PEER_HELLO to the group it names, and each frame of a shared link (one per pair of
  brokers for every group, :mod:`._peer_mux`) to the group its ``group_id`` names;
- the requests of one receive (:meth:`GroupHost.handle_many`) in runs of consecutive requests
  of one group, so answers keep request order across groups.

Leadership stays spread by one rule at a time: with the stage-1 list, each group's leader
applies the shared rule of :mod:`trio_broker._core._spread` (:func:`keep_spread`); with a
map, the balancer on the metadata leader (:mod:`._balancing`) moves it towards the map's
preferred leaders, and nothing else does.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from .._core._commands import CommandRejected, SetGroups
from .._core._raft_messages import Config, ConfigEntry
from .._core._spread import SpreadPacer, preferred_leader
from .._errors import BrokerError
from .._ids import CLUSTER_ID_RE, new_cluster_id
from .._protocol import PeerHello, PeerWelcome, Request
from .._protocol._codec import PlainAppend
from .._storage import open_sqlite_storage
from .._storage._shared_log import SharedGroupStorage
from . import _membership as membership
from ._answer import Answer
from ._balancing_seams import balancer_for
from ._connections import Session
from ._group_routing import GroupRouting, named_group
from ._log import log_event
from ._membership import IdentityMismatch
from ._metamap import (
    MetaMap,
    found_map,
    founding_voter,
    hosted_by_map,
    register_brokers,
    report_replicas,
    track_liveness,
)

if TYPE_CHECKING:
    from ._broker import Broker

T = TypeVar("T")

GroupStorage = Callable[[str, Path], AbstractAsyncContextManager[tuple[Any, Any]]]
"""Opens the storage of one extra group: ``(group id, its data directory)``. It may carry a
``retire`` attribute, ``async retire(group_id, path)``, called once a replica the map no
longer places here has stopped (default: its directory moved to ``groups/removed/``)."""

EVERY_BROKER = 0
"""``replication_factor`` 0 (``--replication-factor all``): found with the stage-1 list, every
broker hosting every group."""

REMOVED_DIR = "removed"

GROUPS_DIR = "groups"
"""Where the extra groups' replicas keep their data, under the broker's data directory."""

MAX_JOIN_BACKOFF = 8
"""Failure timeouts between two attempts to join a group replica, at most."""

SPREAD_TIMEOUTS = 3
"""A group's leader tries to hand it to the preferred broker at most once per this many
failure timeouts (:class:`~trio_broker._core._spread.SpreadPacer`)."""


def group_dir(data_dir: Path, group_id: str) -> Path:
    return Path(data_dir) / GROUPS_DIR / group_id


class GroupHost:
    """The groups one broker process hosts, and how its listeners' traffic reaches them."""

    def __init__(
        self,
        primary: Broker,
        storage: GroupStorage,
        make_broker: Callable[..., Broker],
        *,
        founding: int = 1,
    ) -> None:
        self.primary = primary
        self.groups: dict[str, Broker] = {primary.cluster_id: primary}
        """Every group replica running here, the primary's included, by group id."""
        self.listed: tuple[str, ...] = ()
        """The stage-1 list (:class:`SetGroups`), when the cluster was founded with one."""
        self.meta = MetaMap(primary, on_change=self._changed)
        """The cluster map and the seam to change it (:mod:`._metamap`)."""
        self.meta.hosted_leaders = self._hosted_leaders
        self._storage = storage
        self._make_broker = make_broker
        self._founding = founding
        self._wake = trio.Event()
        self._scopes: dict[str, trio.CancelScope] = {}
        """Replicas opened because the map places them here, by group."""
        self._stopped: dict[str, trio.Event] = {}
        """Set once a replica's task has ended (its storage closed, its data retired)."""
        self._accepted: dict[str, Broker] = {}
        """Peer streams accepted and not yet served: connection name -> its group."""
        self.pacer = SpreadPacer(primary.config.failure_timeout * SPREAD_TIMEOUTS)
        self.routing = GroupRouting(self)
        """Where each request goes (:mod:`._group_routing`)."""

    # -- the groups -----------------------------------------------------------------------------

    @property
    def group_ids(self) -> tuple[str, ...]:
        """The cluster's data groups: the map's (the metadata group apart), or the stage-1
        list (the cluster group among them); empty while neither is known."""
        if self.meta.map is not None:
            return tuple(sorted(self.meta.map.groups))
        return self.listed

    def replica(self, group_id: str) -> Broker | None:
        """This broker's running replica of ``group_id`` (None: not hosted here)."""
        return self.groups.get(group_id)

    def note_groups(self, group_ids: tuple[str, ...]) -> None:
        """The cluster group applied (or a snapshot holds) the stage-1 list."""
        if group_ids and not self.listed:
            self.listed = tuple(group_ids)
            self._wake.set()

    def recheck(self) -> None:
        """A snapshot was installed in the cluster group: read the list and map again."""
        self._wake.set()
        self.meta.note_applied()

    def _changed(self) -> None:
        self._wake.set()

    @property
    def several(self) -> bool:
        return len(self.groups) > 1 or self.meta.map is not None or self.meta.founding

    def _hosted_leaders(self) -> dict[str, str | None]:
        return {g: b.driver.node.leader_id for g, b in self.groups.items() if b is not self.primary}

    def preferred(self, group_id: str, voters: frozenset[str]) -> str | None:
        """The broker that should lead ``group_id``: the map's preferred leader (when it
        votes), or with the stage-1 list the shared rule of :mod:`trio_broker._core._spread`."""
        cmap = self.meta.map
        if cmap is None:
            return preferred_leader(self.listed, group_id, voters)
        record = cmap.group(group_id)
        preferred = None if record is None else record.preferred_leader
        return preferred if preferred in voters else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Found the groups (a founder asked for several), then host what the cluster's
        replicated state says: every group of a stage-1 list, or the groups the map places
        here, following the map as it changes. Keeps each hosted group's leadership spread."""
        primary = self.primary
        self.note_groups(await primary._worker.run(primary._store.group_ids))
        await self.meta.load()
        async with trio.open_nursery() as nursery:
            task_status.started()
            nursery.start_soon(self.meta.run)
            if self._founding > 1 and not self.listed and self.meta.map is None:
                if primary.config.replication_factor == EVERY_BROKER:
                    if primary.node.config.members == {primary.broker_id}:
                        await self._found()
                elif primary.queue_count == 0:
                    self.meta.founding = True  # (from now on: no queue before the groups)
                    nursery.start_soon(found_map, primary, self.meta, self._founding)
            while not self.listed and self.meta.map is None:
                await self._wake.wait()
                self._wake = trio.Event()
                if not self.listed:  # (a snapshot may have brought it)
                    self.note_groups(await primary._worker.run(primary._store.group_ids))
            self._log_known()
            if self.meta.map is None:
                for group_id in self.listed:
                    if group_id != primary.cluster_id:
                        await nursery.start(self._serve_group, group_id)
                for broker in list(self.groups.values()):
                    nursery.start_soon(keep_spread, broker, self)
                return
            nursery.start_soon(register_brokers, primary, self.meta)
            nursery.start_soon(track_liveness, primary, self.meta)
            # The balancer (:mod:`._balancing`): rounds while this broker leads the metadata
            # group; it alone moves the leadership of the groups the map places.
            primary.balancing = balancer_for(primary, self.meta)
            nursery.start_soon(primary.balancing.run)
            nursery.start_soon(
                self.meta.board.run, self.meta, lambda: set(self.groups) - {primary.cluster_id}
            )
            while True:
                self._wake = trio.Event()
                await self._follow_map(nursery)
                await self._wake.wait()

    def _log_known(self) -> None:
        primary = self.primary
        cmap = self.meta.map
        if self._founding > 1 and len(self.group_ids) != self._founding:
            log_event(
                logging.WARNING,
                "groups.setting_ignored",
                asked=self._founding,
                groups=len(self.group_ids),
                reason="the cluster's groups were fixed when it was founded",
            )
        factor = primary.config.replication_factor
        if cmap is not None and factor != cmap.replication_factor:
            log_event(
                logging.WARNING,
                "groups.setting_ignored",
                replication_factor=factor,
                cluster_replication_factor=cmap.replication_factor,
                reason="the cluster's replication factor was fixed when it was founded",
            )
        log_event(
            logging.INFO,
            "groups.known",
            broker_id=primary.broker_id,
            groups=",".join(self.group_ids),
            placed_by="map" if cmap is not None else "list",
            replication_factor=cmap.replication_factor if cmap is not None else "all",
        )

    # -- hosting what the map places here -------------------------------------------------------

    async def _follow_map(self, nursery: trio.Nursery) -> None:
        """Open a replica of every group the map places here, stop those it no longer does,
        and give every replica the brokers' addresses the map holds."""
        cmap = self.meta.map
        assert cmap is not None
        primary = self.primary
        wanted = hosted_by_map(cmap, primary.broker_id) - {primary.cluster_id}
        for group_id in sorted(set(self._scopes) - wanted):
            log_event(logging.INFO, "groups.replica_removed", group=group_id, version=cmap.version)
            self._scopes[group_id].cancel()
        addresses = {b: (r.host, r.port) for b, r in cmap.brokers.items() if b != primary.broker_id}
        for broker in self.groups.values():
            if broker is not primary:
                broker.driver.hinted_addresses.update(addresses)
        for group_id in sorted(wanted - set(self._scopes)):
            stopped = self._stopped.get(group_id)
            if stopped is not None:
                await stopped.wait()  # (a replica of it is still stopping)
            await nursery.start(self._serve_placed, group_id)

    async def _serve_placed(
        self, group_id: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run this broker's replica of a group the map places here, until the map removes
        it (then its data is retired) or the broker stops. A founding voter creates it with
        the founding voters; any other starts empty and waits to be added by its leader."""
        primary = self.primary
        path = group_dir(primary.config.data_dir, group_id)
        config = self._replica_config(group_id, path, seeds=())
        stopped = self._stopped[group_id] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[group_id] = scope
                await trio.Path(path).mkdir(parents=True, exist_ok=True)
                async with self._storage(group_id, path) as (worker, store):
                    identity = await worker.run(store.identity)
                    if identity is None:
                        identity = await worker.run(
                            store.init_identity, primary.broker_id, group_id
                        )
                    elif (identity.broker_id, identity.cluster_id) != (
                        primary.broker_id,
                        group_id,
                    ):
                        raise IdentityMismatch(
                            f"data directory {path} holds broker {identity.broker_id} of "
                            f"group {identity.cluster_id}, not {primary.broker_id} of {group_id}"
                        )
                    state = await worker.run(store.raft_state)
                    configured = state.snapshot_config is not None or any(
                        isinstance(e.payload, ConfigEntry) for e in state.entries
                    )
                    record = None if self.meta.map is None else self.meta.map.group(group_id)
                    founding = (
                        not configured
                        and record is not None
                        and founding_voter(record, primary.broker_id)
                    )
                    if founding:
                        assert record is not None
                        await worker.run(store.bootstrap, Config(voters=frozenset(record.voters)))
                    broker = await self._make_broker(config, identity, store, worker)
                    if self.meta.map is not None:
                        broker.driver.hinted_addresses.update(
                            {
                                b: (r.host, r.port)
                                for b, r in self.meta.map.brokers.items()
                                if b != primary.broker_id
                            }
                        )
                    await self._serve_replica(
                        group_id,
                        broker,
                        task_status,
                        beside=functools.partial(report_replicas, broker, self.meta),
                        founding=founding,
                        waits_to_be_added=not configured and not founding,
                    )
            if scope.cancelled_caught:
                await self._retire(group_id, path)
        finally:
            self._scopes.pop(group_id, None)
            self._stopped.pop(group_id, None)
            stopped.set()
            # Follow the map again: it may have placed the group here once more while this
            # replica was stopping (not reopened then: it was still in ``_scopes``).
            self._wake.set()

    async def _retire(self, group_id: str, path: Path) -> None:
        """A replica the map no longer places here has stopped: its data is moved aside
        (``groups/removed/G-XXXXX``, replacing an older copy), never deleted here; if the
        map places the group here again, the replica starts empty and is caught up."""
        retire = getattr(self._storage, "retire", None)
        if retire is not None:
            await retire(group_id, path)
        else:
            aside = Path(self.primary.config.data_dir) / GROUPS_DIR / REMOVED_DIR / group_id
            await trio.to_thread.run_sync(_move_aside, path, aside)
        log_event(logging.INFO, "groups.replica_retired", group=group_id)

    def _replica_config(
        self, group_id: str, path: Path, *, seeds: tuple[tuple[str, int], ...]
    ) -> Any:
        return attrs.evolve(
            self.primary.config,
            data_dir=path,
            cluster_id=group_id,
            broker_id=self.primary.broker_id,
            seeds=seeds,
            join_wait=False,
            metrics_port=None,
            groups=1,
            founding_brokers=1,
        )

    # -- the stage-1 list -----------------------------------------------------------------------

    async def _found(self) -> None:
        """The founder: create the extra groups (each a single-voter group of this broker,
        stored before the list that names them commits, so a group in the list always
        exists somewhere), then commit the list. A founder that crashed in between reuses the
        groups it had created."""
        primary = self.primary
        base = Path(primary.config.data_dir) / GROUPS_DIR
        made = sorted(
            p.name
            for p in (base.iterdir() if base.is_dir() else ())
            if CLUSTER_ID_RE.fullmatch(p.name)
        )
        extra = made[: self._founding - 1]
        while len(extra) < self._founding - 1:
            group_id = new_cluster_id()
            if group_id not in extra and group_id != primary.cluster_id:
                extra.append(group_id)
        for group_id in extra:
            path = group_dir(primary.config.data_dir, group_id)
            path.mkdir(parents=True, exist_ok=True)
            async with self._storage(group_id, path) as (worker, store):
                if await worker.run(store.identity) is None:
                    await worker.run(store.init_identity, primary.broker_id, group_id)
                    await worker.run(store.bootstrap, Config(voters=frozenset([primary.broker_id])))
        group_ids = tuple(sorted([primary.cluster_id, *extra]))
        while True:
            result = await primary.submit(SetGroups(group_ids))
            if isinstance(result, CommandRejected):
                # (another list was committed first: that one stands)
                log_event(logging.WARNING, "groups.found_refused", reason=result.message)
                break
            if not isinstance(result, BrokerError):
                break
            log_event(logging.WARNING, "groups.found_retry", reason=result.message)
            await trio.sleep(primary.config.failure_timeout)
        self.note_groups(await primary._worker.run(primary._store.group_ids))
        log_event(logging.INFO, "groups.founded", groups=",".join(self.group_ids))

    def _seeds(self) -> tuple[tuple[str, int], ...]:
        """Where to ask to join an extra group: the configured seeds, then every member of the
        cluster group (a broker added with ``add-member`` has no seeds)."""
        primary = self.primary
        seeds = list(primary.config.seeds)
        for member in sorted(primary.node.config.members - {primary.broker_id}):
            address = primary.driver.address_of(member)
            if address is not None and address not in seeds:
                seeds.append(address)
        return tuple(seeds)

    async def _serve_group(
        self, group_id: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run this broker's replica of ``group_id`` until cancelled: open (or join) it, serve
        its consensus and its rooms, and on the way out hand its leadership over."""
        primary = self.primary
        path = group_dir(primary.config.data_dir, group_id)
        path.mkdir(parents=True, exist_ok=True)
        config = self._replica_config(group_id, path, seeds=self._seeds())
        async with self._storage(group_id, path) as (worker, store):
            identity, joining = await self._retried(
                group_id,
                functools.partial(
                    membership.prepare,
                    worker,
                    store,
                    config,
                    primary.network,
                    primary.security.secret,
                ),
            )
            broker = await self._make_broker(config, identity, store, worker)
            await self._serve_replica(
                group_id,
                broker,
                task_status,
                first=functools.partial(self._retried, group_id, broker.join_cluster)
                if joining
                else None,
                joining=joining,
            )

    async def _serve_replica(
        self,
        group_id: str,
        broker: Broker,
        task_status: trio.TaskStatus[None],
        *,
        beside: Callable[[], Awaitable[Any]] | None = None,
        first: Callable[[], Awaitable[Any]] | None = None,
        **fields: Any,
    ) -> None:
        """Serve ``broker``, this broker's open replica of ``group_id``, until cancelled: start
        its services (and ``beside`` among them), route the group's requests and peer frames
        to it, log ``groups.replica_open`` with ``fields``, report it started, await
        ``first`` (if any); on the way out, stop routing to it, then stop its services."""
        primary = self.primary
        async with trio.open_nursery() as services:
            await broker.start_services(services)
            self.groups[group_id] = broker
            primary.connections.hosted_groups.add(group_id)
            log_event(
                logging.INFO,
                "groups.replica_open",
                broker_id=broker.broker_id,
                group=group_id,
                **fields,
            )
            if beside is not None:
                services.start_soon(beside)
            task_status.started()
            try:
                if first is not None:
                    await first()
                await trio.sleep_forever()
            finally:
                self.groups.pop(group_id, None)
                primary.connections.hosted_groups.discard(group_id)
                services.cancel_scope.cancel()

    async def _retried(self, group_id: str, step: Callable[[], Awaitable[T]]) -> T:
        """Preparing or joining a group replica, retried while refused: a seed that has not
        opened that group yet answers WRONG_CLUSTER, which is no reason to stop the broker.
        Backs off up to ``MAX_JOIN_BACKOFF`` failure timeouts; cancelled with the broker."""
        backoff = 1
        while True:
            try:
                return await step()
            except membership.JoinFailed as exc:
                log_event(logging.WARNING, "groups.join_retry", group=group_id, reason=str(exc))
                await trio.sleep(self.primary.config.failure_timeout * backoff)
                backoff = min(backoff * 2, MAX_JOIN_BACKOFF)

    async def step_down(self) -> None:
        """Shutting down: every group this broker leads hands its leadership over at once."""
        async with trio.open_nursery() as nursery:
            for broker in self.groups.values():
                nursery.start_soon(membership.step_down, broker.driver, broker.config)

    # -- routing (:mod:`._group_routing`) -------------------------------------------------------

    async def handle(self, request: Request, session: Session | None = None) -> Answer:
        return await self.routing.handle(request, session)

    async def handle_many(
        self,
        requests: list[Request | PlainAppend],
        session: Session | None,
        answered: Callable[[list[Answer]], None],
    ) -> None:
        await self.routing.handle_many(requests, session, answered)

    def accept_peer(self, hello: PeerHello, peer: str) -> BrokerError | PeerWelcome | None:
        """A PEER_HELLO goes to the group it names; a group not hosted here is refused as
        before (WRONG_CLUSTER, by the cluster group). One that says ``multiplexed`` (a link
        shared by every group, docs/replication.md "Peer links") is welcomed as such: its
        frames naming another group go to that group (:meth:`step_of`)."""
        target = self.groups.get(hello.cluster_id or "", self.primary)
        refusal = target.accept_peer_here(hello, peer)
        if refusal is not None:
            return refusal
        # Served at once (no checkpoint between accepting and serving a stream).
        self._accepted[peer] = target
        if not hello.multiplexed:
            return None
        if hello.host is not None and hello.port is not None:
            # As a hello per group told each group before: where the sender listens (a
            # group's leader corrects its replicated address book from it).
            for broker in self.groups.values():
                if broker is not target:
                    broker.driver.note_address(hello.broker_id, (hello.host, hello.port))
        return PeerWelcome()

    async def serve_peer(
        self, stream: trio.abc.Stream, decoder: Any, peer: str, sender: str
    ) -> bool:
        target = self._accepted.pop(peer, self.primary)
        return await target.serve_peer_here(stream, decoder, peer, sender)

    def step_of(self, group_id: str) -> Callable[[Any], None] | None:
        """Where a peer frame naming ``group_id`` goes: that group's driver, or None when
        this broker does not host it (not yet opened, or closed: the frame is dropped)."""
        broker = self.groups.get(group_id)
        return None if broker is None else broker.driver.step


async def keep_spread(broker: Broker, host: GroupHost) -> None:
    """On the group's leader: hand its leadership to the group's preferred broker
    (:func:`~trio_broker._core._spread.preferred_leader`) once that broker is an active,
    caught-up voter, at most once per pacer interval. Leadership stays where it is while the
    preferred broker is down, and comes back once it has healed."""
    config = broker.config
    group_id = broker.cluster_id
    while True:
        await trio.sleep(config.failure_timeout)
        node = broker.driver.node
        if not node.is_leader or host.primary.connections.closing:
            host.pacer.forget(group_id)
            continue
        preferred = host.preferred(group_id, node.config.voters)
        if preferred is None or preferred == broker.broker_id:
            continue
        view = node.member_statuses().get(preferred)
        ready = (
            view is not None
            and view.status == "active"
            and preferred in node.config.voters
            and node.caught_up(preferred)
        )
        target = host.pacer.hand_over_to(
            group_id=group_id,
            self_id=broker.broker_id,
            preferred=preferred,
            caught_up=ready,
            now=trio.current_time(),
        )
        if target is None:
            continue
        result = await membership.transfer_leadership(broker.driver, config, target)
        log_event(
            logging.INFO if not isinstance(result, BrokerError) else logging.WARNING,
            "groups.spread",
            group=group_id,
            to=target,
            result=result.message if isinstance(result, BrokerError) else "done",
        )


def open_group_storage(
    storage: Callable[[Path], AbstractAsyncContextManager[tuple[Any, Any]]],
) -> GroupStorage:
    """The default: each extra group's storage opened like the broker's own, in its dir.
    SQLite storage (the default) is shared: every extra group on one storage thread and one
    shared log, one fsync per loop turn for all (:mod:`trio_broker._storage._shared_log`)."""
    if storage is open_sqlite_storage:
        return SharedGroupStorage()

    def open_one(_group_id: str, path: Path) -> AbstractAsyncContextManager[tuple[Any, Any]]:
        return storage(path)

    return open_one


def _move_aside(path: Path, aside: Path) -> None:
    if not path.exists():
        return
    aside.parent.mkdir(parents=True, exist_ok=True)
    if aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)


__all__ = [
    "EVERY_BROKER",
    "GROUPS_DIR",
    "GroupHost",
    "GroupStorage",
    "group_dir",
    "keep_spread",
    "named_group",
    "open_group_storage",
]
