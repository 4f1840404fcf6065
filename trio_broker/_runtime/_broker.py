"""A broker: its state, the table that decides each request, and its lifetime.

The rooms around it (docs/architecture.md): :mod:`._connections` reads requests and writes
answers, and calls :meth:`Broker.handle`; :mod:`._membership` serves the operator's requests
and a new broker's join; :mod:`._driver` runs the consensus core; :mod:`._dial` asks other
brokers. Each is handed what it uses, so none of them imports this module.

Lifetimes shape the nurseries: the storage worker outlives the services (the consensus driver
and its peer links, the metrics server), which outlive the connections. Shutdown stops
accepting, stops reading new requests, gives in-flight requests ``shutdown_grace`` seconds to
be answered, then cancels what is left.

Longer than the house's ~600 lines: the table holds every request type of the contract, and
each entry stays next to the handler that decides it; the work-queue requests are decided in
:mod:`._work`, which this module only wires in.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import trio

from .. import _core
from .._core import _work_commands as work
from .._core._commands import AppendBatch as AppendBatchCommand
from .._core._commands import GroupsSet, MapCommand, RetentionPolicy, RetentionSet
from .._errors import BrokerError, ErrorCode, ProtocolError
from .._ids import new_queue_id
from .._protocol import (
    AckRequest,
    AddMember,
    Append,
    AppendBatch,
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    DataSyncRequest,
    FetchValues,
    FrameDecoder,
    JoinCluster,
    ListQueues,
    PeerHello,
    PeerWelcome,
    ProposeMetadata,
    Read,
    RemoveMember,
    Request,
    SeekRequest,
    SetRetentionRequest,
    TakeSnapshot,
    TransferLeadership,
)
from .._protocol import _messages as m
from .._storage import Identity, StorageWorker, Store, open_sqlite_storage
from .._storage._store import RaftState
from . import _balancing as balancing
from . import _membership as membership
from ._answer import Answer
from ._applied import applied_views
from ._balancing import Balancing
from ._boot import note_boot
from ._config import BrokerConfig
from ._connections import ConnectionServer, Session
from ._dial import ask_broker
from ._driver import RaftDriver
from ._groups import GroupHost, GroupStorage, open_group_storage
from ._log import log_event
from ._membership import JoinFailed
from ._metamap import propose_here
from ._metrics import BrokerMetrics, serve_metrics
from ._network import TCP, Network, TlsNetwork
from ._operations import (
    DEFAULT_LIST_QUEUES,
    MAX_LIST_QUEUES,
    MAX_LISTED_CLIENTS,
    append_command,
    is_empty_read,
    position_command,
    queue_list,
    retention_command,
    retention_policy,
    wrong_cluster,
)
from ._peer_mux import PeerMux
from ._peers import Step, read_peer_stream
from ._pending import Pending
from ._recovery import make_node
from ._retention import RetentionEnforcer
from ._runs import Runs, read_command_of
from ._security import Security, load_security
from ._snapshot_fetch import serve_snapshot_chunk
from ._statistics import BrokerStatistics, statistics_of
from ._work import Mapped, WorkRoom, appended_answer, publish_command, read_answer

T = TypeVar("T")


class Broker:
    """A running broker. Built by :func:`open_broker`; serve it with the context manager."""

    def __init__(
        self,
        config: BrokerConfig,
        identity: Identity,
        store: Store,
        worker: StorageWorker,
        state: RaftState,
        port: int,
        network: Network = TCP,
        security: Security | None = None,
        connections: ConnectionServer | None = None,
    ) -> None:
        """``connections``: a group hosted beside the cluster group shares its connections
        (:mod:`._groups`)."""
        self.config = config
        self.broker_id = identity.broker_id
        self.cluster_id = identity.cluster_id
        self.host = config.host
        self.port = port
        self.network = network
        self.security = security or Security()
        self.plaintext_port: int | None = None
        """Where the plaintext listener listens, when there is one."""
        self.plaintext_ports: dict[str, int] = {}
        """Other members' plaintext ports, as their PEER_HELLOs announced them."""
        self._store = store
        self._worker = worker
        self._rng = random.SystemRandom()
        self._queue_ids: set[str] = set()
        self.host: GroupHost | None = None
        """The groups hosted beside this one, on the cluster group's broker (:mod:`._groups`)."""
        self.balancing: Balancing | None = None
        """The balancer, on the metadata group's brokers (:mod:`._balancing`); None: no map."""
        self.retention = RetentionEnforcer(
            self.broker_id,
            config,
            self.submit,
            lambda: self.driver.node.is_leader and not self._closing,
        )
        self.work = WorkRoom(
            config,
            worker,
            store,
            self._propose,
            lambda: self.driver.node.is_leader and not self._closing,
            self.wall_clock_ms,
        )
        self._appended: dict[str, trio.Event] = {}
        """Long-polling readers wait on these, one per queue, set when it grows."""
        self.addresses: dict[str, tuple[str, int]] = {}
        self.driver = RaftDriver(
            self.broker_id,
            self.cluster_id,
            (config.announced_host, config.advertise_port or port),
            config,
            network,
            store,
            worker,
            make_node(self.broker_id, state, config),
            self.addresses,
            applied_views(self._on_applied, self._appended, self.work.wake),
            self._on_snapshot,
        )
        self.metrics = BrokerMetrics(self)
        self.driver.on_transaction = self.metrics.transactions
        self.driver.secret = self.security.secret
        self.metrics_port: int | None = None
        self.runs = Runs(
            config,
            self.driver,
            handle=self.decide,
            closing=lambda: self.connections.closing,
            wall_clock_ms=self.wall_clock_ms,
        )
        """Decides the requests of one receive together (:mod:`._runs`)."""
        self.connections = connections or ConnectionServer(
            config,
            self.security,
            broker_id=self.broker_id,
            cluster_id=self.cluster_id,
            handle=self.handle,
            handle_many=self._handle_many,
            accept_peer=self._accept_peer,
            serve_peer=self._serve_peer,
            observe=self.metrics.observe_batch,
            plaintext_hint=self._plaintext_hint,
        )
        self._handlers = self._request_handlers()

    @property
    def _closing(self) -> bool:
        return self.connections.closing

    @property
    def node(self) -> Any:
        """The consensus core (read-only use: tests and introspection)."""
        return self.driver.node

    @property
    def is_leader(self) -> bool:
        return self.driver.node.is_leader

    @property
    def applied_index(self) -> int:
        """The last log index applied here, in storage and in the broker's views alike."""
        return self.driver.applied_index

    @property
    def leader_id(self) -> str | None:
        return self.driver.node.leader_id

    @property
    def queue_count(self) -> int:
        """Queues of this group known here (what CREATE_QUEUE's placement balances)."""
        return len(self._queue_ids)

    def _on_applied(self, payload: Any, result: Any) -> None:
        """Keep in-memory views of replicated state current as commands are applied."""
        if isinstance(result, GroupsSet):
            if self.host is not None:
                self.host.note_groups(result.group_ids)
        elif isinstance(payload, MapCommand):
            if self.host is not None:
                self.host.meta.note_applied()
        elif isinstance(payload, _core.SetBrokerAddress):
            self.addresses[payload.broker_id] = (payload.host, payload.port)
        elif isinstance(payload, _core.CreateQueue):
            self._queue_ids.add(payload.queue_id)
            if isinstance(result, _core.QueueCreated) and payload.retention is not None:
                self.retention.note_policy(payload.queue_id, payload.retention)
        elif isinstance(result, RetentionSet):
            self.retention.note_policy(result.queue_id, result.policy)
        elif isinstance(result, work.NamedQueue) and result.created:
            self._queue_ids.add(result.queue_id)
            if isinstance(payload.retention, RetentionPolicy):
                self.retention.note_policy(result.queue_id, payload.retention)
        elif isinstance(result, work.QueueDeleted):
            self.retention.retained.discard(result.queue_id)
        if isinstance(payload, _core.AppendMessage | AppendBatchCommand | work.Publish) or (
            isinstance(result, work.QueueDeleted)
        ):
            event = self._appended.pop(payload.queue_id, None)
            if event is not None:
                event.set()
        self.work.note_applied(payload, result)

    def _on_snapshot(self, queues: set[str], retained: set[str]) -> None:
        """An installed snapshot replaced the state the in-memory views were built from."""
        self._queue_ids.update(queues)
        self.retention.replace(retained)
        self.work.names_replaced()
        if self.host is not None:
            self.host.recheck()  # the snapshot may hold the group list

    @property
    def _retained(self) -> set[str]:
        return self.retention.retained

    def wall_clock_ms(self) -> int:
        return self.retention.wall_clock_ms()

    async def wait_leader(self) -> str:
        """Wait until this broker knows a leader of its cluster; returns the leader's id."""
        while self.driver.node.leader_id is None:
            await self.driver.wait_changed()
        return self.driver.node.leader_id

    # -- requests -------------------------------------------------------------------------------

    def topology(self, *, details: bool = False, plaintext: bool = False) -> ClusterTopology:
        """The cluster as CLUSTER_QUERY shows it (:func:`._membership.topology`)."""
        return membership.topology(
            self.driver,
            self.cluster_id,
            self.plaintext_port_of if plaintext else None,
            details=details,
        )

    def plaintext_port_of(self, broker_id: str) -> int | None:
        if broker_id == self.broker_id:
            return self.plaintext_port
        return self.plaintext_ports.get(broker_id)

    def _plaintext_hint(self, error: BrokerError) -> BrokerError:
        """A NOT_LEADER answered on the plaintext listener points at the leader's plaintext
        listener (or at no address, when it is not known here)."""
        if error.code != ErrorCode.NOT_LEADER or "leader_port" not in error.details:
            return error
        details = dict(error.details)
        port = self.plaintext_port_of(details.get("leader_id", ""))
        if port is None:
            details.pop("leader_host", None)
            details.pop("leader_port", None)
        else:
            details["leader_port"] = port
        return type(error)(error.code, error.message, **details)

    def _new_queue_id(self) -> str:
        while True:
            queue_id = new_queue_id(self.cluster_id, self._rng)
            if queue_id not in self._queue_ids:
                self._queue_ids.add(queue_id)
                return queue_id

    def _wrong_cluster(self, cluster_id: str | None) -> BrokerError | None:
        return wrong_cluster(self.cluster_id, cluster_id)

    async def handle(self, request: Request, session: Session | None = None) -> Answer:
        """Decide a request into its answer: a response now, or a pending commit whose result
        becomes the answer. Authentication is decided before, per connection
        (:mod:`._connections`); ``session`` says, among others, whether the request came in on
        the plaintext listener. With several groups hosted here, the group the request names
        decides it (:class:`~._groups.GroupHost`)."""
        if self.host is not None and self.host.several:
            return await self.host.handle(request, session)
        return await self.decide(request, session)

    async def _handle_many(
        self,
        requests: list[Request],
        session: Session | None,
        answered: Callable[[list[Answer]], None],
    ) -> None:
        if self.host is not None and self.host.several:
            await self.host.handle_many(requests, session, answered)
        else:
            await self.runs.handle_many(requests, session, answered)

    async def decide(self, request: Request, session: Session | None = None) -> Answer:
        """Decide a request of this group (:meth:`handle` without the routing)."""
        if self._closing and not isinstance(request, ClusterQuery):
            return Answer(now=BrokerError(ErrorCode.UNAVAILABLE, "broker is shutting down"))
        return await self._handlers[type(request)](request, session)

    def _request_handlers(self) -> dict[type, _Handler]:
        """The table: one handler per request type (those of the connection itself, AUTH and
        PEER_HELLO, are answered by :mod:`._connections`)."""
        return {
            ClusterQuery: self._cluster_query,
            CreateQueue: self._create_queue,
            Append: self._append,
            AppendBatch: self._append,
            Read: self._read,
            AckRequest: self._commit_position,
            SeekRequest: self._commit_position,
            SetRetentionRequest: self._set_retention,
            ListQueues: self._list_queues,
            m.CreateNamedQueue: self._leader(
                lambda r: self.work.create_named(r, self._new_queue_id)
            ),
            m.ResolveQueue: lambda r, _s: self.work.resolve_queue(r),
            **{cls: self._leader(self.work.handle) for cls in _WORK_HANDLED},
            JoinCluster: self._privileged(membership.join),
            RemoveMember: self._privileged(membership.remove),
            TransferLeadership: self._privileged(membership.transfer),
            TakeSnapshot: self._privileged(membership.take_snapshot),
            AddMember: self._privileged(membership.add_member),
            m.Rebalance: self._privileged(
                lambda b, r: balancing.rebalance(
                    b.balancing, r, functools.partial(membership.forward_to_leader, b)
                )
            ),
            m.DrainBroker: self._privileged(
                lambda b, r: balancing.drain(
                    b.balancing, r, functools.partial(membership.forward_to_leader, b)
                )
            ),
            m.SetClusterSettings: self._privileged(balancing.set_cluster_settings),
            ProposeMetadata: self._privileged(propose_here),
            DataSyncRequest: self._privileged(
                lambda b, r: serve_snapshot_chunk(b.driver.read_snapshot_chunk, r)
            ),
            FetchValues: self._privileged(lambda b, r: b.driver.fetch_values(r)),
        }

    def _privileged(self, decide: Callable[[Broker, Any], Awaitable[Any]]) -> _Handler:
        """A broker-to-broker or operator request: decided once its cluster is checked (also
        checked per connection, but :meth:`handle` may be called directly)."""

        async def handler(request: Any, _session: Session | None) -> Answer:
            refusal = self._wrong_cluster(request.cluster_id)
            return Answer(now=refusal or await decide(self, request))

        return handler

    def _leader(self, decide: Callable[[Any], Awaitable[Answer]]) -> _Handler:
        """A request only the leader decides (a replica answers NOT_LEADER at once)."""

        async def handler(request: Any, _session: Session | None) -> Answer:
            if not self.driver.node.is_leader:
                return Answer(now=self.driver.not_leader_error())
            return await decide(request)

        return handler

    async def _cluster_query(self, request: ClusterQuery, session: Session | None) -> Answer:
        plaintext = session is not None and session.plaintext
        return Answer(
            now=self._wrong_cluster(request.cluster_id)
            or self.topology(details=bool(request.details) and not plaintext, plaintext=plaintext)
        )

    async def _commit(self, command: _core.Command | BrokerError) -> Answer:
        """Propose a checked command; its result, once applied, is the answer."""
        if isinstance(command, BrokerError):
            return Answer(now=command)
        return Answer.of(await self._propose(command))

    async def _append(self, request: Append | AppendBatch, _session: Session | None) -> Answer:
        request = await self.work.resolved(request)
        if isinstance(request, BrokerError):
            return Answer(now=request)
        publish = publish_command(request, self.config, appended_ms=self.wall_clock_ms())
        if publish is not None:
            if isinstance(publish, BrokerError):
                return Answer(now=publish)
            return await self.work.commit(publish, appended_answer(request))
        # The leader's clock, in the replicated command: every replica then ages the
        # message alike (docs/protocol.md, "Retention").
        return await self._commit(
            append_command(request, self.config, appended_ms=self.wall_clock_ms())
        )

    async def _read(self, request: Read, _session: Session | None) -> Answer:
        request = await self.work.resolved(request)
        if isinstance(request, BrokerError):
            return Answer(now=request)
        command = read_command_of(request, self.config)
        if isinstance(command, BrokerError):
            return Answer(now=command)
        pending = await self._propose(command)
        if isinstance(pending, BrokerError):
            return Answer(now=pending)
        if request.wait_ms:
            deadline = trio.current_time() + request.wait_ms / 1000
            return Answer(later=Mapped(_LongPoll(self, command, pending, deadline), read_answer))
        return Answer(later=Mapped(pending, read_answer))

    async def _commit_position(
        self, request: AckRequest | SeekRequest, _session: Session | None
    ) -> Answer:
        request = await self.work.resolved(request)
        if isinstance(request, BrokerError):
            return Answer(now=request)
        return await self._commit(position_command(request))

    async def _set_retention(
        self, request: SetRetentionRequest, _session: Session | None
    ) -> Answer:
        request = await self.work.resolved(request)
        if isinstance(request, BrokerError):
            return Answer(now=request)
        return await self._commit(retention_command(request))

    async def _create_queue(self, request: CreateQueue, _session: Session | None) -> Answer:
        refusal = self._wrong_cluster(request.cluster_id)
        if refusal is not None:
            return Answer(now=refusal)
        policy = None
        if request.retention is not None:
            policy = retention_policy(request.retention)
            if isinstance(policy, BrokerError):
                return Answer(now=policy)
        if not self.driver.node.is_leader:
            return Answer(now=self.driver.not_leader_error())
        return await self._commit(_core.CreateQueue(self._new_queue_id(), policy))

    # -- the connection's own requests ----------------------------------------------------------

    def _accept_peer(self, hello: PeerHello, peer: str) -> BrokerError | PeerWelcome | None:
        if self.host is not None:
            return self.host.accept_peer(hello, peer)
        return self.accept_peer_here(hello, peer)

    async def _serve_peer(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, peer: str, sender: str
    ) -> bool:
        if self.host is not None:
            return await self.host.serve_peer(stream, decoder, peer, sender)
        return await self.serve_peer_here(stream, decoder, peer, sender)

    def peer_routes(self, group_id: str) -> Step | None:
        """Where a peer frame naming ``group_id`` goes: that group's driver on this broker,
        or None when it is not hosted here (:meth:`~._groups.GroupHost.step_of`)."""
        if self.host is not None:
            return self.host.step_of(group_id)
        return self.driver.step if group_id == self.cluster_id else None

    def accept_peer_here(self, hello: PeerHello, peer: str) -> BrokerError | None:
        """A member opens its stream of consensus messages to this broker (PEER_HELLO)."""
        refusal = self._wrong_cluster(hello.cluster_id)
        if refusal is None and hello.to not in (None, self.broker_id):
            refusal = BrokerError(
                ErrorCode.BAD_REQUEST, f"this is broker {self.broker_id}, not {hello.to}"
            )
        if refusal is not None:
            log_event(
                logging.WARNING,
                "peer.refused",
                peer=peer,
                broker=hello.broker_id,
                reason=refusal.message,
            )
            return refusal
        if hello.host is not None and hello.port is not None:
            self.driver.note_address(hello.broker_id, (hello.host, hello.port))
        if hello.plaintext_port is None:
            self.plaintext_ports.pop(hello.broker_id, None)
        else:
            self.plaintext_ports[hello.broker_id] = hello.plaintext_port
        return None

    async def serve_peer_here(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, peer: str, sender: str
    ) -> bool:
        return await read_peer_stream(
            stream,
            decoder,
            self.driver.step,
            peer=peer,
            sender=sender,
            self_id=self.broker_id,
            max_frame=self.config.max_frame,
            step_of=self.peer_routes,
        )

    async def _list_queues(self, request: ListQueues, _session: Session | None) -> Answer:
        """Served by the leader from its applied state (it may trail the log by an instant)."""
        refusal = self._wrong_cluster(request.cluster_id)
        if refusal is not None:
            return Answer(now=refusal)
        if not self.driver.node.is_leader:
            return Answer(now=self.driver.not_leader_error())
        limit = DEFAULT_LIST_QUEUES if request.max_queues is None else request.max_queues
        if not 1 <= limit <= MAX_LIST_QUEUES:
            return Answer(now=ProtocolError(f"max_queues must be between 1 and {MAX_LIST_QUEUES}"))
        rows = await self._worker.run(
            self._store.list_queues, request.after, limit, MAX_LISTED_CLIENTS
        )
        return Answer(now=queue_list(rows, limit))

    async def queue_stats(self, limit: int) -> tuple[list[Any], list[Any]]:
        """The ``limit`` longest queues and the ``limit`` largest client lags (for metrics)."""
        return await self._worker.run(self._store.queue_stats, limit)

    async def wait_appended(self, queue_id: str) -> None:
        """Wait until a message is appended to ``queue_id`` (applied on this broker)."""
        event = self._appended.get(queue_id)
        if event is None:
            event = self._appended[queue_id] = trio.Event()
        await event.wait()

    async def start_services(self, nursery: trio.Nursery) -> None:
        """Start what runs beside the requests: the consensus driver, retention, and the work
        room's leases and forgetting (each started: ready once this returns)."""
        await nursery.start(self.driver.run)
        await nursery.start(self.retention.run)
        await nursery.start(self.work.run_leases)
        await nursery.start(self.work.run_forget)

    async def join_cluster(self) -> None:
        """Ask the seeds to let this broker join its cluster (diagram 4); raises
        :class:`JoinFailed` if they refuse it."""
        await membership.join_cluster(
            self.config,
            self.network,
            self.security.secret,
            JoinCluster(
                broker_id=self.broker_id,
                host=self.driver.self_address[0],
                port=self.driver.self_address[1],
                cluster_id=self.cluster_id,
            ),
            self.driver.hinted_addresses,
        )

    async def _propose(self, command: _core.Command) -> Pending | BrokerError:
        if not self.driver.node.is_leader:
            return self.driver.not_leader_error()
        return await self.driver.propose(command)

    async def submit(self, command: _core.Command) -> _core.Result | BrokerError:
        """Commit one command and wait until it is applied; for embedding and tests."""
        pending = await self._propose(command)
        return pending if isinstance(pending, BrokerError) else await pending.wait()

    async def transfer_leadership(self, target: str | None = None) -> str | BrokerError:
        """On the leader: hand the leadership to ``target`` (None: the most caught-up voter);
        returns the new leader's id once it leads, or the error that stopped it. Waits at most
        two failure timeouts (the core gives up on the target after one)."""
        return await membership.transfer_leadership(self.driver, self.config, target)

    async def ask(
        self, address: tuple[str, int], request: Request, cls: type[T], deadline: float
    ) -> T | BrokerError:
        """One request to another broker, proved with this broker's cluster secret."""
        return await ask_broker(
            self.network, address, request, cls, secret=self.security.secret, deadline=deadline
        )

    def statistics(self) -> BrokerStatistics:
        """What this broker reports about itself now (frozen: metrics and tests read it)."""
        return statistics_of(self.driver, self.connections.connections)


_Handler = Callable[[Any, "Session | None"], Awaitable[Answer]]
_WORK_HANDLED = (
    m.DeleteQueueRequest,
    m.ForgetPositionRequest,
    m.GroupJoin,
    m.GroupRead,
    m.GroupAck,
    m.GroupNack,
    m.GroupExtend,
    m.GroupDelete,
)
"""Requests the work room decides on the leader (docs/protocol.md, "Work queues")."""


def _is_empty(result: Any) -> bool:
    return is_empty_read(result) or (isinstance(result, work.Delivered) and not result.messages)


class _LongPoll:
    """A READ with ``wait_ms``: when nothing was there, wait for an append and read again.

    Waited on by the connection's writer, in request order, so later pipelined requests are
    proposed meanwhile but answered after it (docs/protocol.md: use a connection of its own).
    """

    done = False
    result = None

    def __init__(
        self, broker: Broker, command: _core.Command, first: Pending, deadline: float
    ) -> None:
        self.broker = broker
        self.command = command
        self.first = first
        self.deadline = deadline

    async def wait(self) -> Any:
        result = await self.first.wait()
        while _is_empty(result) and trio.current_time() < self.deadline:
            with trio.move_on_at(self.deadline):
                await self.broker.wait_appended(self.command.queue_id)
            pending = await self.broker._propose(self.command)
            if isinstance(pending, BrokerError):
                return pending
            result = await pending.wait()
        return result


@contextlib.asynccontextmanager
async def open_broker(
    config: BrokerConfig,
    *,
    network: Network = TCP,
    storage: Callable[[Path], AbstractAsyncContextManager[tuple[Any, Any]]] = (open_sqlite_storage),
    group_storage: GroupStorage | None = None,
) -> AsyncIterator[Broker]:
    """Start a broker and serve it for the body of the ``async with``.

    A broker with no seeds and an empty data directory founds a new single-voter cluster, and
    ``open_broker`` returns once it leads it. With seeds, it joins their cluster as a learner
    (and becomes a voter once caught up); a restarted broker rejoins from its data directory.

    Raises :class:`~trio_broker._storage.DataDirInUse` if another broker holds the data
    directory, :class:`IdentityMismatch` if the directory belongs to another identity, and
    :class:`JoinFailed` if the seeds' cluster refuses this broker.

    ``config.groups``: a founder founds a cluster of that many replication groups
    (docs/replication.md, "Several leaders"); others take the cluster's. Whatever it says, a
    broker opens a replica of every group its cluster's replicated state lists
    (:class:`~._groups.GroupHost`), each with its storage from ``group_storage`` (default:
    ``storage`` in ``data_dir/groups/G-XXXXX``).

    ``network`` and ``storage`` are seams for ``trio_broker.testing``: an in-memory network
    and storage run the same broker under a mock clock.
    """
    groups = config.groups
    security = load_security(config)
    refused: JoinFailed | None = None
    plain_network = network
    if security.server_context is not None:
        assert security.client_context is not None
        network = TlsNetwork(network, security.server_context, security.client_context)
    async with storage(config.data_dir) as (worker, store):
        # Before the core is built from the store's state (docs/reliability.md, "A reboot").
        await note_boot(worker, store, data_dir=str(config.data_dir))
        listeners, port = await network.listen(config.host, config.port)
        plaintext: list[trio.abc.Listener[Any]] = []
        plaintext_port = None
        try:
            if config.plaintext_port is not None:
                plaintext, plaintext_port = await plain_network.listen(
                    config.host, config.plaintext_port
                )
            identity, joining = await membership.prepare(
                worker, store, config, network, security.secret
            )
        except BaseException:
            for listener in listeners + plaintext:
                await trio.aclose_forcefully(listener)
            raise
        state = await worker.run(store.raft_state)
        broker = Broker(config, identity, store, worker, state, port, network, security)
        broker.plaintext_port = plaintext_port
        broker.driver.plaintext_port = plaintext_port
        broker.addresses.update(await worker.run(store.broker_addresses))
        broker._queue_ids.update(await worker.run(store.queue_lengths))
        broker._on_snapshot(set(), set(await worker.run(store.retention_policies)))
        founder = not joining and not config.seeds and not config.join_wait
        if groups > 1 and not founder:
            log_event(
                logging.WARNING,
                "groups.setting_ignored",
                asked=groups,
                reason="only a founder sets the groups: a joining broker takes its cluster's",
            )
        host = broker.host = GroupHost(
            broker,
            group_storage or open_group_storage(storage),
            functools.partial(_group_replica, broker),
            founding=groups if founder else 1,
        )
        async with trio.open_nursery() as services:
            broker.driver.peer_mux = open_peer_mux(broker, services)
            await broker.start_services(services)
            await services.start(host.run)
            if config.metrics_port is not None:
                broker.metrics_port = await services.start(
                    serve_metrics, broker, config.host, config.metrics_port
                )
            async with trio.open_nursery() as connections:
                await connections.start(
                    functools.partial(broker.connections.serve, listeners, connections)
                )
                if plaintext:
                    await connections.start(
                        functools.partial(
                            broker.connections.serve, plaintext, connections, plaintext=True
                        )
                    )
                log_event(
                    logging.INFO,
                    "broker.started",
                    broker_id=broker.broker_id,
                    cluster_id=broker.cluster_id,
                    host=config.host,
                    port=broker.port,
                    data_dir=config.data_dir,
                    plaintext_port=plaintext_port,
                    **security.describe(),
                )
                if security.tokens is not None and security.secret is None:
                    log_event(
                        logging.WARNING,
                        "broker.insecure",
                        reason="client tokens without a cluster secret: anyone may join, "
                        "replicate, vote, change the membership or the leadership, or compact "
                        "the log (docs/security.md)",
                    )
                try:
                    if joining:
                        try:
                            await broker.join_cluster()
                        except JoinFailed as exc:
                            refused = exc  # raised as itself once the broker has stopped
                    elif not broker.node.config.members:
                        log_event(
                            logging.INFO,
                            "broker.waiting_to_be_added",
                            broker_id=broker.broker_id,
                            cluster_id=broker.cluster_id,
                        )
                    elif broker.node.config.voters == {broker.broker_id}:
                        with trio.fail_after(config.failure_timeout * 10):
                            await broker.driver.wait_leading()
                    if refused is None:
                        yield broker
                finally:
                    with trio.CancelScope(shield=True):
                        log_event(logging.INFO, "broker.stopping", broker_id=broker.broker_id)
                        if host.several:
                            await host.step_down()
                        else:
                            await membership.step_down(broker.driver, config)
                        await broker.connections.shutdown(connections)
            services.cancel_scope.cancel()
    log_event(logging.INFO, "broker.stopped", data_dir=config.data_dir)
    if refused is not None:
        raise refused


async def _group_replica(
    primary: Broker, config: BrokerConfig, identity: Identity, store: Store, worker: StorageWorker
) -> Broker:
    """Another group's replica beside ``primary``: its own store, worker and consensus core;
    the primary's listener port, network, security and connections."""
    await note_boot(worker, store, broker_id=identity.broker_id)
    state = await worker.run(store.raft_state)
    broker = Broker(
        config,
        identity,
        store,
        worker,
        state,
        primary.port,
        primary.network,
        primary.security,
        connections=primary.connections,
    )
    broker.plaintext_port = primary.plaintext_port
    broker.driver.plaintext_port = primary.plaintext_port
    broker.driver.peer_mux = primary.driver.peer_mux
    broker.peer_routes = primary.peer_routes  # type: ignore[method-assign]
    broker.plaintext_ports = primary.plaintext_ports
    broker.addresses.update(await worker.run(store.broker_addresses))
    broker._queue_ids.update(await worker.run(store.queue_lengths))
    broker._on_snapshot(set(), set(await worker.run(store.retention_policies)))
    return broker


def open_peer_mux(broker: Broker, nursery: trio.Nursery) -> PeerMux:
    """The broker's links to its peers, shared by every group it hosts (:mod:`._peer_mux`),
    their tasks in ``nursery``."""
    driver = broker.driver
    return PeerMux(
        broker.broker_id,
        broker.cluster_id,
        nursery,
        driver.self_address,
        broker.network.connect,
        dead_after=max(1.0, 2 * broker.config.failure_timeout),
        secret=broker.security.secret,
        plaintext_port=driver.plaintext_port,
    )


async def serve_broker(
    config: BrokerConfig, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a broker until cancelled; ``task_status.started`` gets the :class:`Broker`."""
    async with open_broker(config) as broker:
        task_status.started(broker)
        await trio.sleep(math.inf)
