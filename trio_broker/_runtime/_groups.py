"""Several replication groups in one broker process (docs/replication.md, "Several leaders",
stage 1).

A cluster founded with ``--groups N`` has N replication groups: the cluster's own (its
``--cluster-id``, the data directory as before) and N-1 more, each a consensus group of its own
with its own log, leader, voters and queues. Their ids are replicated state: the founder commits
them in the cluster group's log (:class:`~trio_broker._core._commands.SetGroups`), so a
restarted broker, a joiner and a replica installing a snapshot all learn the same list.

In stage 1 every broker hosts every group. Each group's replica is a :class:`~._broker.Broker`
(today's class, reused) with its own store and storage worker under
``data_dir/groups/G-XXXXX/``; the cluster group's broker (the *primary*) owns the listeners,
security, the metrics server and the connections, and :class:`GroupHost` routes what they
receive:

- client requests by the group their queue id names (``cluster_of_queue``) or their
  ``cluster_id``; CREATE_QUEUE to the group this broker leads with fewest queues; CLUSTER_QUERY
  naming no group about that same group, every answer listing ``groups``;
- a PEER_HELLO to the group it names, and each frame of a shared link (one per pair of
  brokers for every group, :mod:`._peer_mux`) to the group its ``group_id`` names;
- the requests of one receive (:meth:`GroupHost.handle_many`) in runs of consecutive requests
  of one group, so answers keep request order across groups.

Each group's leader keeps leadership spread (:func:`keep_spread`, with the shared rule of
:mod:`trio_broker._core._spread`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from .._core._commands import CommandRejected, SetGroups
from .._core._raft_messages import Config
from .._core._routing import GroupView
from .._core._spread import SpreadPacer, preferred_leader
from .._errors import BrokerError
from .._ids import CLUSTER_ID_RE, cluster_of_queue, new_cluster_id
from .._protocol import (
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    PeerHello,
    PeerWelcome,
    Request,
)
from . import _membership as membership
from ._answer import Answer
from ._connections import Session
from ._log import log_event

if TYPE_CHECKING:
    from ._broker import Broker

T = TypeVar("T")

GroupStorage = Callable[[str, Path], AbstractAsyncContextManager[tuple[Any, Any]]]
"""Opens the storage of one extra group: ``(group id, its data directory)``."""

GROUPS_DIR = "groups"
"""Where the extra groups' replicas keep their data, under the broker's data directory."""

MAX_JOIN_BACKOFF = 8
"""Failure timeouts between two attempts to join a group replica, at most."""

SPREAD_TIMEOUTS = 3
"""A group's leader tries to hand it to the preferred broker at most once per this many
failure timeouts (:class:`~trio_broker._core._spread.SpreadPacer`)."""


def group_dir(data_dir: Path, group_id: str) -> Path:
    return Path(data_dir) / GROUPS_DIR / group_id


def named_group(request: Any) -> str | None:
    """The group a request names: its queue id's group, else its ``cluster_id``."""
    queue = getattr(request, "queue_name", None)
    if isinstance(queue, str):
        group = cluster_of_queue(queue)
        if group is not None:
            return group
    cluster_id = getattr(request, "cluster_id", None)
    return cluster_id if isinstance(cluster_id, str) else None


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
        self.group_ids: tuple[str, ...] = ()
        """The cluster's groups, as its replicated state says (empty: one group)."""
        self._storage = storage
        self._make_broker = make_broker
        self._founding = founding
        self._wake = trio.Event()
        self._accepted: dict[str, Broker] = {}
        """Peer streams accepted and not yet served: connection name -> its group."""
        self.pacer = SpreadPacer(primary.config.failure_timeout * SPREAD_TIMEOUTS)

    # -- the group list -------------------------------------------------------------------------

    def note_groups(self, group_ids: tuple[str, ...]) -> None:
        """The cluster group applied (or a snapshot holds) the group list."""
        if group_ids and not self.group_ids:
            self.group_ids = tuple(group_ids)
            self._wake.set()

    def recheck(self) -> None:
        """A snapshot was installed in the cluster group: read the list from its store."""
        self._wake.set()

    @property
    def several(self) -> bool:
        return len(self.groups) > 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Found the extra groups (a founder asked for several), then open a replica of every
        group of the list once it is known, and keep each group's leadership spread."""
        primary = self.primary
        self.note_groups(await primary._worker.run(primary._store.group_ids))
        async with trio.open_nursery() as nursery:
            task_status.started()
            if (
                not self.group_ids
                and self._founding > 1
                and primary.node.config.members == {primary.broker_id}
            ):
                await self._found()
            while not self.group_ids:
                await self._wake.wait()
                self._wake = trio.Event()
                if not self.group_ids:  # (a snapshot may have brought it)
                    self.note_groups(await primary._worker.run(primary._store.group_ids))
            if self._founding > 1 and len(self.group_ids) != self._founding:
                log_event(
                    logging.WARNING,
                    "groups.setting_ignored",
                    asked=self._founding,
                    groups=len(self.group_ids),
                    reason="the cluster's groups were fixed when it was founded",
                )
            log_event(
                logging.INFO,
                "groups.known",
                broker_id=primary.broker_id,
                groups=",".join(self.group_ids),
            )
            for group_id in self.group_ids:
                if group_id != primary.cluster_id:
                    await nursery.start(self._serve_group, group_id)
            for broker in list(self.groups.values()):
                nursery.start_soon(keep_spread, broker, self)

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
        config = attrs.evolve(
            primary.config,
            data_dir=path,
            cluster_id=group_id,
            broker_id=primary.broker_id,
            seeds=self._seeds(),
            join_wait=False,
            metrics_port=None,
            groups=1,
        )
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
            async with trio.open_nursery() as services:
                await broker.start_services(services)
                self.groups[group_id] = broker
                primary.connections.hosted_groups.add(group_id)
                log_event(
                    logging.INFO,
                    "groups.replica_open",
                    broker_id=broker.broker_id,
                    group=group_id,
                    joining=joining,
                )
                task_status.started()
                try:
                    if joining:
                        await self._retried(group_id, broker.join_cluster)
                    await trio.sleep(math.inf)
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

    # -- routing --------------------------------------------------------------------------------

    def target(self, request: Any) -> Broker:
        """The group replica that decides ``request`` (the primary for anything it does not
        route: a queue name, an unknown group, which the primary refuses as before)."""
        group = named_group(request)
        if group is None:
            return self.primary
        return self.groups.get(group, self.primary)

    def led(self) -> list[Broker]:
        return [b for _, b in sorted(self.groups.items()) if b.driver.node.is_leader]

    def for_new_queue(self) -> Broker | None:
        """The group a CREATE_QUEUE sent here lands on: the one this broker leads with fewest
        queues (ties to the lowest id); None when it leads none."""
        led = self.led()
        if not led:
            return None
        return min(led, key=lambda b: (b.queue_count, b.cluster_id))

    def for_query(self) -> Broker:
        """The group a CLUSTER_QUERY naming none is answered about (PROTOCOL.md): the one a
        CREATE_QUEUE would land on, else the cluster group."""
        return self.for_new_queue() or self.primary

    def not_leader(self) -> BrokerError:
        """NOT_LEADER for a CREATE_QUEUE here: naming the leader of some group (the cluster
        group's when known), so an original-design client retries where queues can land."""
        for broker in [self.primary, *(b for _, b in sorted(self.groups.items()))]:
            error = broker.driver.not_leader_error()
            if "leader_id" in error.details:
                return error
        return self.primary.driver.not_leader_error()

    def views(self) -> list[GroupView]:
        """CLUSTER_QUERY's ``groups``: every group hosted here, in id order."""
        views = []
        for group_id, broker in sorted(self.groups.items()):
            node = broker.driver.node
            leader = node.leader_id
            address = None
            if leader is not None:
                address = (
                    broker.driver.self_address
                    if leader == broker.broker_id
                    else broker.driver.address_of(leader)
                )
            views.append(
                GroupView(
                    cluster_id=group_id,
                    leader_id=leader,
                    leader_host=None if address is None else address[0],
                    leader_port=None if address is None else address[1],
                    voters=tuple(sorted(node.config.voters)),
                    learners=tuple(sorted(node.config.learners)),
                )
            )
        return views

    async def handle(self, request: Request, session: Session | None = None) -> Answer:
        if isinstance(request, ClusterQuery):
            target = self.groups.get(request.cluster_id or "") or (
                self.primary if request.cluster_id else self.for_query()
            )
            answer = await target.decide(request, session)
            if self.several and isinstance(answer.now, ClusterTopology):
                answer = Answer(
                    now=attrs.evolve(
                        answer.now, groups=self.views(), metadata_group=self.primary.cluster_id
                    )
                )
            return answer
        if isinstance(request, CreateQueue) and self.several:
            chosen = self.for_new_queue()
            if chosen is None and not self.primary.connections.closing:
                return Answer(now=self.not_leader())
            return await (chosen or self.primary).decide(request, session)
        return await self.target(request).decide(request, session)

    async def handle_many(
        self,
        requests: list[Request],
        session: Session | None,
        answered: Callable[[list[Answer]], None],
    ) -> None:
        """The requests of one receive, in runs of consecutive requests of one group, each run
        decided by that group's :class:`~._runs.Runs`; CLUSTER_QUERY and CREATE_QUEUE alone.
        Runs are decided one after the other, so answers stay in request order."""
        start = 0
        while start < len(requests):
            first = requests[start]
            if isinstance(first, ClusterQuery | CreateQueue):
                answered([await self.handle(first, session)])
                start += 1
                continue
            target = self.target(first)
            end = start + 1
            while (
                end < len(requests)
                and not isinstance(requests[end], ClusterQuery | CreateQueue)
                and self.target(requests[end]) is target
            ):
                end += 1
            await target.runs.handle_many(requests[start:end], session, answered)
            start = end

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
        preferred = preferred_leader(host.group_ids, group_id, node.config.voters)
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
    """The default: each extra group's storage opened like the broker's own, in its dir."""

    def open_one(_group_id: str, path: Path) -> AbstractAsyncContextManager[tuple[Any, Any]]:
        return storage(path)

    return open_one


__all__ = [
    "GROUPS_DIR",
    "GroupHost",
    "GroupStorage",
    "group_dir",
    "keep_spread",
    "named_group",
    "open_group_storage",
]
