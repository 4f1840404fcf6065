"""A broker: its state, the table that decides each request, and the queue requests' handlers.

The rooms around it (docs/architecture.md): :mod:`._connections` reads requests and writes
answers, and calls :meth:`Broker.handle`; :mod:`._admin` says which room decides each
broker-to-broker and operator request (:mod:`._membership` serves the operator's requests and
a new broker's join); :mod:`._driver` runs the consensus core; :mod:`._dial` asks other
brokers. Each is handed what it uses, so none of them imports this module. The broker's
lifetime, its nurseries and a hosted group's replica are built in :mod:`._open`.

A little longer than the house's ~600 lines: the table holds every request type of the
contract, and each queue request's entry stays next to the handler that decides it; the
work-queue requests are decided in :mod:`._work`, the admin requests in :mod:`._admin`, which
this module only wires in.
"""

from __future__ import annotations

import logging
import random
import weakref
from collections.abc import Awaitable, Callable
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
    Append,
    AppendBatch,
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    FrameDecoder,
    JoinCluster,
    ListQueues,
    PeerHello,
    PeerWelcome,
    Read,
    Request,
    SeekRequest,
    SetRetentionRequest,
)
from .._protocol import _messages as m
from .._protocol._codec import PlainAppend
from .._storage import Identity, StorageWorker, Store
from .._storage._store import RaftState
from . import _membership as membership
from ._admin import Handler, admin_handlers
from ._answer import Answer
from ._applied import applied_views
from ._balancing import Balancing
from ._config import BrokerConfig
from ._connections import ConnectionServer, Session
from ._dial import ask_broker
from ._driver import RaftDriver
from ._groups import GroupHost
from ._log import log_event
from ._metrics import BrokerMetrics
from ._network import TCP, Network
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
from ._peers import Step, read_peer_stream
from ._pending import Pending
from ._recovery import make_node
from ._retention import RetentionEnforcer
from ._runs import ReadAnswer, Runs, read_command_of
from ._security import Security
from ._statistics import BrokerStatistics, statistics_of
from ._work import Mapped, WorkRoom, appended_answer, publish_command, read_answer

T = TypeVar("T")


class Broker:
    """A running broker. Built by :func:`~._open.open_broker`; serve it with the context
    manager."""

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
        self._appended: weakref.WeakValueDictionary[str, trio.Event] = weakref.WeakValueDictionary()
        """Long-polling readers wait on these, one per queue, set when it grows; an entry goes
        when no poll holds it (a READ on a queue that is not there leaves nothing behind)."""
        self._poll_ends: weakref.WeakValueDictionary[tuple[str, str], _PollEnds] = (
            weakref.WeakValueDictionary()
        )
        """What ends the long-polling READs of a client on a queue, by (client id, queue id):
        its FORGET_POSITION (:meth:`_forget_position`); an entry goes when no poll holds it."""
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
            wall_clock_ms=self.retention.wall_clock_ms,  # (what wall_clock_ms calls: one call less)
        )
        """Decides the requests of one receive together (:mod:`._runs`)."""
        self.connections = connections or ConnectionServer(
            config,
            self.security,
            broker_id=self.broker_id,
            cluster_id=self.cluster_id,
            handle=self.handle,
            handle_many=self._handle_many,
            handle_lone=self._handle_lone,
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
        if (
            isinstance(payload, _core.AppendMessage | AppendBatchCommand | work.Publish)
            or isinstance(result, work.QueueDeleted)
        ) and payload.queue_id in self._appended.data:  # (as applied_views tests it)
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

    async def load_views(self) -> None:
        """Build the in-memory views (addresses, queues, retention policies) from the store;
        once, before the broker serves."""
        self.addresses.update(await self._worker.run(self._store.broker_addresses))
        self._queue_ids.update(await self._worker.run(self._store.queue_lengths))
        self._on_snapshot(set(), set(await self._worker.run(self._store.retention_policies)))

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
        requests: list[Request | PlainAppend],
        session: Session | None,
        answered: Callable[[list[Answer]], None],
    ) -> None:
        if self.host is not None and self.host.several:
            await self.host.handle_many(requests, session, answered)
        else:
            await self.runs.handle_many(requests, session, answered)

    def _handle_lone(self, request: PlainAppend) -> Answer | None:
        if self.host is not None and self.host.several:
            return None  # (routed by the host: handle_many)
        return self.runs.lone_append(request)

    async def decide(self, request: Request, session: Session | None = None) -> Answer:
        """Decide a request of this group (:meth:`handle` without the routing)."""
        if self._closing and not isinstance(request, ClusterQuery):
            return Answer(now=BrokerError(ErrorCode.UNAVAILABLE, "broker is shutting down"))
        return await self._handlers[type(request)](request, session)

    def _request_handlers(self) -> dict[type, Handler]:
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
            ListQueues: self.driver.leading_checked(self._list_queues),
            m.CreateNamedQueue: self._leader(
                lambda r: self.work.create_named(r, self._new_queue_id)
            ),
            m.ResolveQueue: lambda r, _s: self.work.resolve_queue(r),
            **{cls: self._leader(self.work.handle) for cls in _WORK_HANDLED},
            # (the work room's, after the long polls it ends: in place of the entry above)
            m.ForgetPositionRequest: self._leader(self._forget_position),
            **admin_handlers(self),
        }

    def _leader(self, decide: Callable[[Any], Awaitable[Answer]]) -> Handler:
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
        appended = ends = None
        if request.wait_ms:
            appended = self.appended_event(command.queue_id)
            key = (command.client_id, command.queue_id)
            ends = self._poll_ends.get(key)
            if ends is None:
                ends = self._poll_ends[key] = _PollEnds()
        pending = await self._propose(command)
        if isinstance(pending, BrokerError):
            return Answer(now=pending)
        if appended is not None and ends is not None:
            deadline = trio.current_time() + request.wait_ms / 1000
            poll = _LongPoll(self, command, pending, deadline, appended, ends)
            return Answer(later=Mapped(poll, read_answer))
        return ReadAnswer(later=Mapped(pending, read_answer))

    async def _forget_position(self, request: m.ForgetPositionRequest) -> Answer:
        """FORGET_POSITION (the work room proposes it), after ending the long-polling READs of
        that client on that queue waiting here: none reads again after it, from the first
        retained message as a new client would, to set the position it forgot (their client
        may be gone: the position would then hold retention until the idle sweep, if any).

        Ended before the FORGET is proposed, with no checkpoint between (a queue id resolves
        without one): a poll's read proposed before it is in the log before it, and a poll
        that starts after it takes a new :class:`_PollEnds`, as its first read follows it."""
        resolved = await self.work.resolved(request)
        if not isinstance(resolved, BrokerError):
            ends = self._poll_ends.pop((resolved.client_id, resolved.queue_name), None)
            if ends is not None:
                ends.end()
            request = resolved
        return await self.work.handle(request)

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

    def appended_event(self, queue_id: str) -> trio.Event:
        """The event the next append to ``queue_id`` applied here sets. A long poll takes it
        before it reads: an append applied after the read looked is then never missed."""
        event = self._appended.get(queue_id)
        if event is None:
            event = self._appended[queue_id] = trio.Event()
        return event

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


class _PollEnds:
    """Ends the long-polling READs of one client on one queue (:meth:`Broker._forget_position`):
    each wait is cancelled, and none reads again."""

    __slots__ = ("__weakref__", "ended", "waits")

    def __init__(self) -> None:
        self.ended = False
        self.waits: set[trio.CancelScope] = set()

    def end(self) -> None:
        self.ended = True
        for scope in self.waits:
            scope.cancel()


class _LongPoll:
    """A READ with ``wait_ms``: when nothing was there, wait for an append and read again.

    Waited on by the connection's writer, in request order, so later pipelined requests are
    proposed meanwhile but answered after it (docs/protocol.md: use a connection of its own).
    Each read's wake-up event (``appended``) is taken before the read is proposed, as the
    group poll's (``_work.py``): an append applied before the read's answer arrives (in the
    same Ready, say) still wakes the next read. So a wait that runs out without its event set
    saw no append since its read looked: the poll answers that read's nothing without reading
    again (a read then could only find what a position moved back left, a FORGET_POSITION's
    first retained message, which it would read as a new client, setting a position the
    forget had just removed).

    A FORGET_POSITION of its client and queue (``ends``) ends it: it answers what it had read
    (nothing) and reads no more (docs/protocol.md, "FORGET_POSITION").
    """

    done = False
    result = None

    def __init__(
        self,
        broker: Broker,
        command: _core.Command,
        first: Pending,
        deadline: float,
        appended: trio.Event,
        ends: _PollEnds,
    ) -> None:
        self.broker = broker
        self.command = command
        self.first = first
        self.deadline = deadline
        self.appended = appended
        self.ends = ends

    async def wait(self) -> Any:
        result = await self.first.wait()
        appended, ends = self.appended, self.ends
        while _is_empty(result) and not ends.ended and trio.current_time() < self.deadline:
            with trio.move_on_at(self.deadline) as waiting:
                ends.waits.add(waiting)
                try:
                    await appended.wait()
                finally:
                    ends.waits.discard(waiting)
            if ends.ended or not appended.is_set():
                break  # forgotten, or the wait ran out with no append since the read
            appended = self.broker.appended_event(self.command.queue_id)
            pending = await self.broker._propose(self.command)
            if isinstance(pending, BrokerError):
                return pending
            result = await pending.wait()
        return result
