"""The trio shell of one broker: one nursery of supervised tasks around the storage worker.

Lifetimes shape the nurseries: the storage worker outlives the services (the consensus driver
and its peer links, the metrics server), which outlive the connections. Shutdown stops
accepting, stops reading new requests, gives in-flight requests ``shutdown_grace`` seconds to
be answered, then cancels what is left.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio

from .. import _core
from .._auth import new_nonce, proof_is_valid, token_is_valid
from .._core._commands import AppendBatch as AppendBatchCommand
from .._core._commands import ApplyRetention, RetentionSet
from .._core._raft_messages import ChangeAction, Config, ConfigChange, ConfigEntry
from .._errors import BrokerError, ErrorCode, ProtocolError
from .._ids import new_broker_id, new_cluster_id, new_queue_id
from .._protocol import (
    PRIVILEGED_REQUESTS,
    AckRequest,
    AddMember,
    Append,
    AppendBatch,
    Auth,
    AuthChallenge,
    BrokerInfo,
    Challenge,
    ClusterQuery,
    ClusterTopology,
    CreateQueue,
    DataSyncRequest,
    Done,
    FrameDecoder,
    FrameTooLarge,
    JoinCluster,
    Joined,
    LeadershipTransferred,
    ListQueues,
    MemberAdded,
    PeerHello,
    Read,
    RemoveMember,
    Request,
    Response,
    SeekRequest,
    SetRetentionRequest,
    SnapshotChunk,
    SnapshotTaken,
    TakeSnapshot,
    TransferLeadership,
    decode_request,
    encode_frame,
    encode_response,
    loads_object,
)
from .._protocol._codec import OPERATION_NAMES
from .._protocol._peer import message_from_obj
from .._storage import Identity, StorageWorker, Store, open_sqlite_storage
from .._storage._store import RaftState
from ._config import BrokerConfig
from ._dial import UNREACHABLE, ask_broker, unreachable_reason
from ._driver import Pending, RaftDriver, acquire, make_node
from ._log import log_event, logger
from ._metrics import BrokerMetrics, serve_metrics
from ._network import TCP, Network, TlsHandshakeFailed, TlsNetwork, transport_socket
from ._operations import (
    DEFAULT_LIST_QUEUES,
    MAX_LIST_QUEUES,
    MAX_LISTED_CLIENTS,
    append_command,
    is_empty_read,
    position_command,
    queue_list,
    read_command,
    response_for,
    retention_command,
    retention_policy,
)
from ._security import Security, load_security

_RECEIVE_SIZE = 64 * 1024
PEER_FRAME_FACTOR = 80
"""A peer stream's frames may carry a batch of entries, each up to a client frame in size."""
_LINGER_SECONDS = 1.0
TLS_HANDSHAKE_SECONDS = 10.0


@attrs.define
class _Session:
    """What one connection has proved (docs/security.md)."""

    plaintext: bool = False
    """Came in on the plaintext listener: client operations only, no authentication."""
    nonce: str | None = None
    """From the last AUTH_CHALLENGE; forgotten once a proof was checked against it."""
    member: bool = False
    """Proved the cluster secret: may send PRIVILEGED_REQUESTS (and client operations)."""
    client: bool = False
    """Presented a valid client token."""


@attrs.frozen
class BrokerStatistics:
    connections: int
    role: str
    term: int
    commit_index: int
    applied_index: int
    pending_proposals: int
    elections_won: int
    transactions: int
    """SQLite transactions of the consensus driver (those that only apply are not fsynced)."""
    entries_applied: int
    commands_applied: int
    """Queue commands applied: an entry holds one, or a group of many (proposal batching)."""
    transfers_completed: int = 0
    """Leadership transfers this broker started as leader that ended with the target leading."""
    transfers_received: int = 0
    """Elections this broker won because a leader handed over to it (TIMEOUT_NOW)."""


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
    ) -> None:
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
        self._retained: set[str] = set()
        """Queues with a retention policy (applied here): while there is one, the leader
        proposes an enforcement every ``retention_interval``."""
        self._policy_added = trio.Event()
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
            self._on_applied,
            self._on_snapshot,
        )
        self.metrics = BrokerMetrics(self)
        self.driver.on_transaction = self.metrics.transactions
        self.driver.secret = self.security.secret
        self.metrics_port: int | None = None
        self._connections = 0
        self._readers: set[trio.CancelScope] = set()
        self._closing = False
        self._listening: list[trio.CancelScope] = []
        self._idle = trio.Event()
        self._idle.set()

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

    def _on_applied(self, payload: Any, result: Any) -> None:
        """Keep in-memory views of replicated state current as commands are applied."""
        if isinstance(payload, _core.SetBrokerAddress):
            self.addresses[payload.broker_id] = (payload.host, payload.port)
        elif isinstance(payload, _core.CreateQueue):
            self._queue_ids.add(payload.queue_id)
            if isinstance(result, _core.QueueCreated) and payload.retention is not None:
                self._note_policy(payload.queue_id, payload.retention)
        elif isinstance(result, RetentionSet):
            self._note_policy(result.queue_id, result.policy)
        if isinstance(payload, _core.AppendMessage | AppendBatchCommand):
            event = self._appended.pop(payload.queue_id, None)
            if event is not None:
                event.set()

    def _note_policy(self, queue_id: str, policy: _core.RetentionPolicy) -> None:
        if policy.keeps_everything:
            self._retained.discard(queue_id)
        else:
            self._retained.add(queue_id)
            self._policy_added.set()

    def _on_snapshot(self, queues: set[str], retained: set[str]) -> None:
        """An installed snapshot replaced the state the in-memory views were built from."""
        self._queue_ids.update(queues)
        self._retained = set(retained)
        if retained:
            self._policy_added.set()

    def wall_clock_ms(self) -> int:
        return int(self.config.wall_clock() * 1000)

    async def enforce_retention(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """On the leader, while some queue has a retention policy: propose an enforcement
        (``ApplyRetention`` with this broker's wall clock) every ``retention_interval``, one
        at a time. Replicas delete when they apply it, so they all delete the same messages.
        Failures (no quorum, a lost leadership) are only logged: the next round retries."""
        task_status.started()
        while True:
            if not self._retained:
                # Nothing to enforce: sleep until a policy appears (no idle wake-ups).
                self._policy_added = trio.Event()
                await self._policy_added.wait()
            await trio.sleep(self.config.retention_interval)
            if not self._retained or not self.driver.node.is_leader or self._closing:
                continue
            try:
                result: Any = BrokerError(ErrorCode.UNAVAILABLE, "no answer in time")
                # Bounded: a lost leadership resolves the proposal, but never wait for ever.
                with trio.move_on_after(self.config.failure_timeout * 10):
                    result = await self.submit(ApplyRetention(self.wall_clock_ms()))
            except Exception:
                logger.exception("retention.crashed broker_id=%s", self.broker_id)
                continue
            if isinstance(result, BrokerError):
                log_event(logging.DEBUG, "retention.not_applied", reason=result.message)
            elif result.trimmed:
                log_event(
                    logging.DEBUG,
                    "retention.applied",
                    queues=len(result.trimmed),
                    first_retained=",".join(f"{q}:{n}" for q, n in result.trimmed),
                )

    async def wait_leader(self) -> str:
        """Wait until this broker knows a leader of its cluster; returns the leader's id."""
        while self.driver.node.leader_id is None:
            await self.driver.wait_changed()
        return self.driver.node.leader_id

    # -- requests -------------------------------------------------------------------------------

    def topology(self, *, details: bool = False, plaintext: bool = False) -> ClusterTopology:
        """The cluster as CLUSTER_QUERY shows it; with ``plaintext``, as the plaintext
        listener shows it: each member at its plaintext port (members whose plaintext port is
        not known here are left out), so that clients of the original design reconnect to a
        listener they can speak to. With ``details``, each member's membership and lag."""
        node = self.driver.node
        brokers = []
        last = node.log.last_index
        for member_id, view in node.member_statuses().items():
            if member_id == self.broker_id:
                address = self.driver.self_address
            else:
                address = self.driver.address_of(member_id)
            if address is not None and plaintext:
                port = self.plaintext_port_of(member_id)
                address = None if port is None else (address[0], port)
            if address is None:
                continue  # its address is not replicated here yet
            brokers.append(
                BrokerInfo(
                    broker_id=member_id,
                    host=address[0],
                    port=address[1],
                    role="leader" if view.role == "leader" else "replica",
                    status=view.status,
                    membership=(
                        ("learner" if view.role == "learner" else "voter") if details else None
                    ),
                    lag=self._lag(member_id, last) if details else None,
                )
            )
        return ClusterTopology(
            cluster_id=self.cluster_id,
            cluster_version=node.cluster_version,
            self_role="leader" if node.is_leader else "replica",
            brokers=brokers,
            self_id=self.broker_id,
            leader_id=node.leader_id,
        )

    def _lag(self, member_id: str, last_index: int) -> int | None:
        """Log entries ``member_id`` lacks, as the leader knows it; None elsewhere."""
        node = self.driver.node
        if not node.is_leader:
            return None
        if member_id == self.broker_id:
            return 0
        progress = node.progress.get(member_id)
        return None if progress is None else max(0, last_index - progress.match)

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
        if cluster_id is not None and cluster_id != self.cluster_id:
            return BrokerError(
                ErrorCode.WRONG_CLUSTER,
                f"this broker belongs to cluster {self.cluster_id}, not {cluster_id}",
                cluster_id=self.cluster_id,
            )
        return None

    async def handle(
        self, request: Request, *, plaintext: bool = False
    ) -> Response | BrokerError | Pending:
        """Decide a request: an answer now, or a pending commit whose result is the answer.

        Authentication is decided before, per connection (:meth:`_authorize`); ``plaintext`` says
        the request came in on the plaintext listener."""
        if isinstance(request, ClusterQuery):
            return self._wrong_cluster(request.cluster_id) or self.topology(
                details=bool(request.details) and not plaintext, plaintext=plaintext
            )
        if self._closing:
            return BrokerError(ErrorCode.UNAVAILABLE, "broker is shutting down")
        if isinstance(request, Append | AppendBatch):
            command = append_command(request, self.config)
            if isinstance(command, BrokerError):
                return command
            # The leader's clock, in the replicated command: every replica then ages the
            # message alike (docs/protocol.md, "Retention").
            return await self._propose(attrs.evolve(command, appended_ms=self.wall_clock_ms()))
        if isinstance(request, Read):
            command = read_command(request, self.config)
            if isinstance(command, BrokerError):
                return command
            pending = await self._propose(command)
            if request.wait_ms and isinstance(pending, Pending):
                deadline = trio.current_time() + request.wait_ms / 1000
                return _LongPoll(self, command, pending, deadline)
            return pending
        if isinstance(request, AckRequest | SeekRequest):
            command = position_command(request)
            if isinstance(command, BrokerError):
                return command
            return await self._propose(command)
        if isinstance(request, SetRetentionRequest):
            command = retention_command(request)
            if isinstance(command, BrokerError):
                return command
            return await self._propose(command)
        if isinstance(request, ListQueues):
            return await self._list_queues(request)
        if isinstance(request, CreateQueue):
            policy = None
            if request.retention is not None:
                policy = retention_policy(request.retention)
                if isinstance(policy, BrokerError):
                    return policy
            if not self.driver.node.is_leader:
                return self.driver.not_leader_error()
            return await self._propose(_core.CreateQueue(self._new_queue_id(), policy))
        if isinstance(request, JoinCluster):
            return self._wrong_cluster(request.cluster_id) or await self._join(request)
        if isinstance(request, RemoveMember):
            return self._wrong_cluster(request.cluster_id) or await self._remove(request)
        if isinstance(request, TransferLeadership):
            return self._wrong_cluster(request.cluster_id) or await self._transfer(request)
        if isinstance(request, TakeSnapshot):
            return self._wrong_cluster(request.cluster_id) or await self._take_snapshot()
        if isinstance(request, AddMember):
            return self._wrong_cluster(request.cluster_id) or await self._add_member(request)
        if isinstance(request, DataSyncRequest):
            return self._wrong_cluster(request.cluster_id) or await self._snapshot_chunk(request)
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover

    async def _list_queues(self, request: ListQueues) -> Response | BrokerError:
        """Served by the leader from its applied state (it may trail the log by an instant)."""
        if not self.driver.node.is_leader:
            return self.driver.not_leader_error()
        limit = DEFAULT_LIST_QUEUES if request.max_queues is None else request.max_queues
        if not 1 <= limit <= MAX_LIST_QUEUES:
            return ProtocolError(f"max_queues must be between 1 and {MAX_LIST_QUEUES}")
        rows = await self._worker.run(
            self._store.list_queues, request.after, limit, MAX_LISTED_CLIENTS
        )
        return queue_list(rows, limit)

    async def wait_appended(self, queue_id: str) -> None:
        """Wait until a message is appended to ``queue_id`` (applied on this broker)."""
        event = self._appended.get(queue_id)
        if event is None:
            event = self._appended[queue_id] = trio.Event()
        await event.wait()

    async def _propose(self, command: _core.Command) -> Pending | BrokerError:
        if not self.driver.node.is_leader:
            return self.driver.not_leader_error()
        return await self.driver.propose(command)

    async def submit(self, command: _core.Command) -> _core.Result | BrokerError:
        """Commit one command and wait until it is applied; for embedding and tests."""
        pending = await self._propose(command)
        return pending if isinstance(pending, BrokerError) else await pending.wait()

    async def _join(self, request: JoinCluster) -> Response | BrokerError:
        """Diagram 4 on the leader: record the address, add a learner, answer with the view.

        The learner then receives the log (or a DATA_SYNC snapshot) like any replica, and the
        leader promotes it to voter once it has caught up.
        """
        if not self.driver.node.is_leader:
            return await self._forward_to_leader(request)
        node = self.driver.node
        # The address first, so that every member can reach the broker once it is a member;
        # a broker that is already a member (rejoining after a restart) only updates it.
        result = await self.submit(
            _core.SetBrokerAddress(request.broker_id, request.host, request.port)
        )
        if isinstance(result, BrokerError):
            return result
        if request.broker_id not in node.config.members:
            result = await self.driver.change_membership(
                ConfigChange(ChangeAction.ADD_LEARNER, request.broker_id)
            )
            if isinstance(result, BrokerError):
                return result
            log_event(
                logging.INFO,
                "membership.learner_added",
                broker=request.broker_id,
                host=request.host,
                port=request.port,
                cluster_version=node.cluster_version,
            )
        topology = self.topology()
        return Joined(
            cluster_id=self.cluster_id,
            cluster_version=topology.cluster_version,
            leader_id=self.broker_id,
            brokers=topology.brokers,
        )

    async def _remove(self, request: RemoveMember) -> Response | BrokerError:
        if not self.driver.node.is_leader:
            return await self._forward_to_leader(request)
        if request.broker_id not in self.driver.node.config.members:
            return BrokerError(
                ErrorCode.BAD_REQUEST, f"{request.broker_id} is not a member of {self.cluster_id}"
            )
        result = await self.driver.change_membership(
            ConfigChange(ChangeAction.REMOVE, request.broker_id)
        )
        if isinstance(result, BrokerError):
            return result
        log_event(
            logging.INFO,
            "membership.removed",
            broker=request.broker_id,
            cluster_version=self.driver.node.cluster_version,
        )
        return Done()

    async def _transfer(self, request: TransferLeadership) -> Response | BrokerError:
        """Hand the leadership over (thesis 3.10) and answer once the new leader leads."""
        if not self.driver.node.is_leader:
            return await self._forward_to_leader(request)
        result = await self.transfer_leadership(request.broker_id)
        if isinstance(result, BrokerError):
            return result
        return LeadershipTransferred(leader_id=result, term=self.driver.node.term)

    async def transfer_leadership(self, target: str | None = None) -> str | BrokerError:
        """On the leader: hand the leadership to ``target`` (None: the most caught-up voter);
        returns the new leader's id once it leads, or the error that stopped it. Waits at most
        two failure timeouts (the core gives up on the target after one)."""
        with trio.move_on_after(self.config.failure_timeout * 2):
            return await self.driver.transfer_leadership(target)
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"leadership transfer to {target or 'the most caught-up voter'} not confirmed in "
            f"{self.config.failure_timeout * 2:g} s: the election it started is not over",
        )

    async def _take_snapshot(self) -> Response:
        index, term = await self.driver.snapshot_now()
        return SnapshotTaken(broker_id=self.broker_id, snapshot_index=index, snapshot_term=term)

    async def _add_member(self, request: AddMember) -> Response | BrokerError:
        """The operator's side of a join: the leader asks the broker at ``host:port`` who it
        is, and adds it as a learner only if it is of this cluster and a member of none
        (started with ``--join-wait --cluster-id`` and an empty data directory)."""
        if not self.driver.node.is_leader:
            return await self._forward_to_leader(request)
        where = f"{request.host}:{request.port}"
        deadline = self.config.failure_timeout * 4
        try:
            # With a cluster secret, the new broker must accept this broker's proof: it holds
            # the same secret, or it could never replicate or vote.
            answer = await self._ask_broker(
                (request.host, request.port), ClusterQuery(cluster_id=self.cluster_id), deadline
            )
        except UNREACHABLE as exc:
            return BrokerError(
                ErrorCode.UNAVAILABLE,
                f"cannot reach a broker at {where}: {unreachable_reason(exc, deadline)}",
            )
        if answer.get("code") == ErrorCode.UNAUTHORIZED:
            return BrokerError(
                ErrorCode.UNAUTHORIZED,
                f"the broker at {where} refused this cluster's secret: start it with the same "
                f"--cluster-secret-file (and give add-member its main port, not a plaintext "
                f"one): {answer.get('message')}",
            )
        if answer.get("code") == ErrorCode.WRONG_CLUSTER or (
            answer.get("status") == "success" and answer.get("cluster_id") != self.cluster_id
        ):
            return BrokerError(
                ErrorCode.WRONG_CLUSTER,
                f"the broker at {where} belongs to cluster {answer.get('cluster_id')}, not "
                f"{self.cluster_id}; a broker is a member of one cluster only (start a new one "
                f"with --join-wait --cluster-id {self.cluster_id} and an empty data directory)",
            )
        broker_id = answer.get("self_id")
        if answer.get("status") != "success" or not isinstance(broker_id, str):
            return BrokerError(
                ErrorCode.BAD_REQUEST,
                f"the broker at {where} did not say who it is: {answer.get('message')}",
            )
        if broker_id not in self.driver.node.config.members and answer.get("brokers"):
            return BrokerError(
                ErrorCode.BAD_REQUEST,
                f"broker {broker_id} at {where} already has a membership of its own (it founded "
                "a cluster, or was removed from this one): only a broker started with "
                "--join-wait and an empty data directory can be added",
            )
        joined = await self._join(
            JoinCluster(
                broker_id=broker_id,
                host=request.host,
                port=request.port,
                cluster_id=self.cluster_id,
            )
        )
        if isinstance(joined, BrokerError):
            return joined
        return MemberAdded(broker_id=broker_id, cluster_version=self.driver.node.cluster_version)

    async def _forward_to_leader(self, request: Request) -> Response | BrokerError:
        """Membership requests may reach any member; it passes them on to the leader."""
        error = self.driver.not_leader_error()
        host, port = error.details.get("leader_host"), error.details.get("leader_port")
        if host is None or port is None:
            return error
        # The leader's own work may take a bounded time too (an ADD_MEMBER reaches the new
        # broker first): wait for longer than that.
        deadline = self.config.failure_timeout * (10 if isinstance(request, AddMember) else 4)
        try:
            # Proved with this broker's own secret: it checked the requester's.
            answer = await self._ask_broker((host, port), request, deadline)
        except UNREACHABLE as exc:
            return BrokerError(
                ErrorCode.UNAVAILABLE,
                f"could not reach the leader: {unreachable_reason(exc, deadline)}; the request "
                "may or may not have been applied",
                outcome="unknown",
            )
        return _Forwarded(answer)

    async def _ask_broker(
        self, address: tuple[str, int], request: Request, deadline: float
    ) -> dict[str, Any]:
        """One request to another broker, proved with this broker's cluster secret."""
        return await ask_broker(
            self.network, address, request, secret=self.security.secret, deadline=deadline
        )

    async def _snapshot_chunk(self, request: DataSyncRequest) -> Response | BrokerError:
        found = await trio.to_thread.run_sync(
            self.driver.read_snapshot_chunk, request.snapshot_id, request.offset
        )
        if found is None:
            return BrokerError(ErrorCode.BAD_REQUEST, f"no snapshot {request.snapshot_id!r}")
        chunk, size, digest = found
        return SnapshotChunk(
            snapshot_id=request.snapshot_id,
            offset=request.offset,
            size=size,
            data=base64.b64encode(chunk).decode(),
            sha256=digest,
        )

    def statistics(self) -> BrokerStatistics:
        node = self.driver.node
        return BrokerStatistics(
            connections=self._connections,
            role=node.role.value,
            term=node.term,
            commit_index=node.commit,
            applied_index=node.applied,
            pending_proposals=self.driver.pending,
            elections_won=self.driver.elections_won,
            transactions=self.driver.transactions,
            entries_applied=self.driver.entries_applied,
            commands_applied=self.driver.commands_applied,
            transfers_completed=self.driver.transfers["completed"],
            transfers_received=self.driver.transfers["received"],
        )

    # -- connections ----------------------------------------------------------------------------

    async def _handle_stream(self, stream: trio.abc.Stream, *, plaintext: bool = False) -> None:
        peer = _peer_name(stream)
        if self._closing or self._connections >= self.config.max_connections:
            reason = "shutting down" if self._closing else "too many connections"
            log_event(logging.WARNING, "connection.refused", peer=peer, reason=reason)
            with trio.move_on_after(1):
                error = BrokerError(ErrorCode.UNAVAILABLE, f"broker refused connection: {reason}")
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(encode_frame(encode_response(error)))
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        self._idle = trio.Event() if self._connections == 1 else self._idle
        try:
            async with stream:
                if isinstance(stream, trio.SSLStream) and not await _tls_handshake(stream, peer):
                    return
                await self._serve_connection(stream, peer, _Session(plaintext=plaintext))
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away (perhaps mid-answer); nothing of ours is lost
        except* Exception:
            # A bug in serving one connection must not take the broker down with it.
            logger.exception("connection.crashed peer=%s", peer)
        finally:
            self._connections -= 1
            if self._connections == 0:
                self._idle.set()

    async def _serve_connection(
        self, stream: trio.abc.Stream, peer: str, session: _Session
    ) -> None:
        # Answers leave in request order. A request is read only once it has a slot among
        # max_in_flight, so a command is never submitted without a place for its answer.
        slots = trio.Semaphore(self.config.max_in_flight)
        send, receive = trio.open_memory_channel[Any](self.config.max_in_flight)
        peer_closed = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_responses, stream, receive, slots, session.plaintext)
            async with send:
                with trio.CancelScope() as reading:
                    self._readers.add(reading)
                    try:
                        peer_closed = await self._read_requests(stream, peer, send, slots, session)
                    finally:
                        self._readers.discard(reading)
        if not peer_closed:
            await _linger(stream)

    async def _read_requests(
        self,
        stream: trio.abc.Stream,
        peer: str,
        send: trio.MemorySendChannel[Any],
        slots: trio.Semaphore,
        session: _Session,
    ) -> bool:
        """Read and dispatch requests; True when the peer closed, False when we stopped."""
        decoder = FrameDecoder(self.config.max_frame)
        while True:
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                if decoder.buffered:
                    log_event(
                        logging.INFO,
                        "connection.truncated_frame",
                        peer=peer,
                        buffered=decoder.buffered,
                    )
                return True
            decoder.feed(data)
            while True:
                try:
                    payload = decoder.next_frame()
                except FrameTooLarge as exc:
                    # The stream cannot be resynchronised: answer, then close this connection.
                    log_event(
                        logging.WARNING,
                        "request.rejected",
                        peer=peer,
                        code=exc.code,
                        reason=exc.message,
                    )
                    await slots.acquire()
                    send.send_nowait(("INVALID", time.perf_counter(), exc))
                    return False
                if payload is None:
                    break
                await acquire(slots)
                started = time.perf_counter()
                try:
                    request = decode_request(payload)
                except ProtocolError as exc:
                    log_event(
                        logging.WARNING,
                        "request.rejected",
                        peer=peer,
                        code=exc.code,
                        reason=exc.message,
                    )
                    send.send_nowait(("INVALID", started, exc))
                    continue
                operation = OPERATION_NAMES[type(request)]
                early = self._authorize(request, session, peer)
                if early is not None:
                    send.send_nowait((operation, started, early))
                    if isinstance(request, PeerHello) and isinstance(early, BrokerError):
                        return False  # what follows would be consensus messages
                    continue
                if isinstance(request, PeerHello):
                    refusal = self._wrong_cluster(request.cluster_id)
                    if refusal is None and request.to not in (None, self.broker_id):
                        refusal = BrokerError(
                            ErrorCode.BAD_REQUEST,
                            f"this is broker {self.broker_id}, not {request.to}",
                        )
                    if refusal is not None:
                        log_event(
                            logging.WARNING,
                            "peer.refused",
                            peer=peer,
                            broker=request.broker_id,
                            reason=refusal.message,
                        )
                        send.send_nowait(("PEER_HELLO", started, refusal))
                        return False
                    if request.host is not None and request.port is not None:
                        self.driver.note_address(request.broker_id, (request.host, request.port))
                    if request.plaintext_port is None:
                        self.plaintext_ports.pop(request.broker_id, None)
                    else:
                        self.plaintext_ports[request.broker_id] = request.plaintext_port
                    send.send_nowait(("PEER_HELLO", started, Done()))
                    return await self._read_peer_stream(stream, decoder, peer, request.broker_id)
                try:
                    answer = await self.handle(request, plaintext=session.plaintext)
                except BaseException:
                    slots.release()
                    raise
                send.send_nowait((operation, started, answer))

    def _authorize(
        self, request: Request, session: _Session, peer: str
    ) -> Response | BrokerError | None:
        """Answer AUTH_CHALLENGE and AUTH, and refuse what this connection may not send
        (docs/security.md); None lets the request through to :meth:`handle`."""
        security = self.security
        if isinstance(request, AuthChallenge | Auth) and session.plaintext:
            return self._unauthorized(
                peer, request, "the plaintext listener serves client operations only"
            )
        if isinstance(request, AuthChallenge):
            session.nonce = new_nonce()
            return Challenge(nonce=session.nonce)
        if isinstance(request, Auth):
            return self._authenticate(request, session, peer)
        if isinstance(request, PRIVILEGED_REQUESTS):
            if session.plaintext:
                return self._unauthorized(
                    peer,
                    request,
                    "operator and broker-to-broker requests are not served on this listener",
                )
            if security.secret is not None and not session.member:
                return self._unauthorized(
                    peer, request, "this request needs the cluster secret (AUTH with a proof)"
                )
            refusal = self._wrong_cluster(getattr(request, "cluster_id", None))
            if refusal is not None:
                log_event(
                    logging.WARNING,
                    "request.wrong_cluster",
                    peer=peer,
                    operation=OPERATION_NAMES[type(request)],
                    cluster_id=getattr(request, "cluster_id", None),
                )
            return refusal
        if isinstance(request, ClusterQuery) or session.plaintext:
            return None
        if security.tokens is not None and not (session.client or session.member):
            return self._unauthorized(peer, request, "this broker needs a client token (AUTH)")
        return None

    def _authenticate(self, request: Auth, session: _Session, peer: str) -> Response | BrokerError:
        if (request.proof is None) == (request.token is None):
            return ProtocolError("AUTH carries either a proof or a token")
        if request.proof is not None:
            nonce, session.nonce = session.nonce, None  # one proof per nonce: no replay
            if self.security.secret is None:
                return self._unauthorized(
                    peer,
                    request,
                    "this broker has no cluster secret (every member needs the same one)",
                )
            if nonce is None:
                return self._unauthorized(peer, request, "no nonce to prove: AUTH_CHALLENGE first")
            if not proof_is_valid(self.security.secret, nonce, request.proof):
                return self._unauthorized(
                    peer, request, "wrong cluster secret: the proof does not match this cluster's"
                )
            session.member = True
            return Done()
        assert request.token is not None
        tokens = self.security.tokens
        if tokens is not None and not token_is_valid(tokens, request.token):
            return self._unauthorized(peer, request, "client token refused")
        session.client = True
        return Done()

    def _unauthorized(self, peer: str, request: Request, reason: str) -> BrokerError:
        fields = {"peer": peer, "operation": OPERATION_NAMES[type(request)]}
        if isinstance(request, PeerHello | JoinCluster):
            fields["broker"] = request.broker_id
        log_event(logging.WARNING, "request.unauthorized", **fields, reason=reason)
        return BrokerError(ErrorCode.UNAUTHORIZED, reason)

    async def _read_peer_stream(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, peer: str, sender: str
    ) -> bool:
        """After PEER_HELLO: one-way consensus messages from ``sender``, never answered."""
        decoder.max_frame = self.config.max_frame * PEER_FRAME_FACTOR
        while True:
            while True:
                try:
                    payload = decoder.next_frame()
                    if payload is None:
                        break
                    message = message_from_obj(loads_object(payload))
                except ProtocolError as exc:
                    log_event(
                        logging.WARNING,
                        "peer.bad_message",
                        peer=peer,
                        broker=sender,
                        reason=exc.message,
                    )
                    return False
                if message.src != sender or message.dst != self.broker_id:
                    log_event(
                        logging.WARNING,
                        "peer.misaddressed",
                        peer=peer,
                        broker=sender,
                        src=message.src,
                        dst=message.dst,
                    )
                    continue
                self.driver.step(message)
            data = await stream.receive_some(_RECEIVE_SIZE)
            if not data:
                return True
            decoder.feed(data)

    async def _write_responses(
        self,
        stream: trio.abc.Stream,
        receive: trio.MemoryReceiveChannel[Any],
        slots: trio.Semaphore,
        plaintext: bool,
    ) -> None:
        async with receive:
            async for item in receive:
                out = [await self._answer(item, plaintext)]
                # Whatever else is already answered goes out in the same write.
                while len(out) < 64:
                    try:
                        nxt = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    out.append(await self._answer(nxt, plaintext))
                await stream.send_all(b"".join(out))
                for _ in out:
                    slots.release()

    async def _answer(self, entry: tuple[str, float, Any], plaintext: bool) -> bytes:
        operation, started, item = entry
        if isinstance(item, Pending) and item.done:
            item = response_for(item.result)  # answered already: no need to yield here
        elif isinstance(item, Pending | _LongPoll):
            item = response_for(await item.wait())
        if plaintext and isinstance(item, BrokerError):
            item = self._plaintext_hint(item)
        self.metrics.observe(operation, item, time.perf_counter() - started)
        if isinstance(item, _Forwarded):
            return encode_frame(orjson.dumps(item.body))
        return encode_frame(encode_response(item))

    # -- lifetime -------------------------------------------------------------------------------

    async def _serve_listeners(
        self,
        listeners: list[trio.abc.Listener[Any]],
        connections: trio.Nursery,
        *,
        plaintext: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scope = trio.CancelScope()
        self._listening.append(scope)
        if self._closing:
            scope.cancel()
        with scope:
            await trio.serve_listeners(
                functools.partial(self._handle_stream, plaintext=plaintext),
                listeners,
                handler_nursery=connections,
                task_status=task_status,
            )

    async def _step_down(self) -> None:
        """A leader that shuts down first hands its leadership to the most caught-up voter,
        so that writes resume within a round trip instead of after a failure timeout. Bounded
        by min(shutdown_grace, failure_timeout); meanwhile new requests are answered
        NOT_LEADER naming that voter, and requests already proposed still commit."""
        node = self.driver.node
        if not node.is_leader or not node.config.voters - {self.broker_id}:
            return
        term = node.term
        limit = min(self.config.shutdown_grace, self.config.failure_timeout)
        with trio.move_on_after(limit):
            result = await self.driver.transfer_leadership(None)
            if isinstance(result, BrokerError):
                log_event(logging.WARNING, "broker.step_down_failed", reason=result.message)
            else:
                log_event(
                    logging.INFO,
                    "broker.stepped_down",
                    broker_id=self.broker_id,
                    term=term,
                    new_leader=result,
                    new_term=self.driver.node.term,
                )
            return
        log_event(
            logging.WARNING, "broker.step_down_failed", reason=f"no new leader in {limit:g} s"
        )

    async def _shutdown(self, connections: trio.Nursery) -> None:
        self._closing = True
        for scope in self._listening:
            scope.cancel()
        for scope in list(self._readers):
            scope.cancel()
        with trio.move_on_after(self.config.shutdown_grace):
            await self._idle.wait()
        connections.cancel_scope.cancel()


class _LongPoll:
    """A READ with ``wait_ms``: when nothing was there, wait for an append and read again.

    Waited on by the connection's writer, in request order, so later pipelined requests are
    proposed meanwhile but answered after it (docs/protocol.md: use a connection of its own).
    """

    def __init__(
        self, broker: Broker, command: _core.Command, first: Pending, deadline: float
    ) -> None:
        self.broker = broker
        self.command = command
        self.first = first
        self.deadline = deadline

    async def wait(self) -> Any:
        result = await self.first.wait()
        while is_empty_read(result) and trio.current_time() < self.deadline:
            with trio.move_on_at(self.deadline):
                await self.broker.wait_appended(self.command.queue_id)
            pending = await self.broker._propose(self.command)
            if isinstance(pending, BrokerError):
                return pending
            result = await pending.wait()
        return result


@attrs.frozen
class _Forwarded:
    """The leader's answer to a request this broker forwarded, passed on unchanged."""

    body: dict[str, Any]


async def _linger(stream: trio.abc.Stream) -> None:
    """Close our side first and drain theirs, so the kernel does not reset the connection
    (which would discard answers the peer has not read yet) because of unread requests."""
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return  # TLS has no half-close: closing sends close_notify after the answers
    with trio.move_on_after(_LINGER_SECONDS):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_eof()
            while await stream.receive_some(_RECEIVE_SIZE):
                pass


async def _tls_handshake(stream: trio.SSLStream[Any], peer: str) -> bool:
    """Shake hands before reading requests, so that a client that does not speak TLS (or does
    not trust our certificate) is logged as such, and a silent one does not hold a slot."""
    reason = None
    with trio.move_on_after(TLS_HANDSHAKE_SECONDS) as scope:
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            reason = str(exc.__cause__ or exc)
    if scope.cancelled_caught:
        reason = f"no handshake within {TLS_HANDSHAKE_SECONDS:g} s"
    if reason is not None:
        log_event(logging.INFO, "connection.tls_failed", peer=peer, reason=reason)
        return False
    return True


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = transport_socket(stream)
    if sock is None:
        return getattr(stream, "peer_name", "unknown")
    try:
        host, port, *_ = sock.getpeername()
    except OSError:
        return "unknown"
    return f"{host}:{port}"


class IdentityMismatch(Exception):
    """The data directory belongs to another broker or cluster than the configuration says."""


class JoinFailed(Exception):
    """A new broker could not join the cluster its seeds belong to."""


def _check_identity(found: Identity, config: BrokerConfig) -> None:
    for name, wanted, stored in (
        ("broker id", config.broker_id, found.broker_id),
        ("cluster id", config.cluster_id, found.cluster_id),
    ):
        if wanted is not None and wanted != stored:
            raise IdentityMismatch(
                f"data directory {config.data_dir} holds {name} {stored}, "
                f"but {wanted} was asked for"
            )


async def _ask_seeds(
    config: BrokerConfig, network: Network, request: Request, secret: bytes | None
) -> dict[str, Any]:
    """Send one request to the seeds in turn, following NOT_LEADER hints; the first answer
    that is not a NOT_LEADER or a connection failure wins. Retries with backoff until the
    caller's deadline. With a ``secret``, each connection proves it first; a refused proof is
    an answer like any other."""
    backoff = 0.1
    while True:
        targets = list(config.seeds)
        tried: set[tuple[str, int]] = set()
        while targets:
            target = targets.pop(0)
            if target in tried:
                continue
            tried.add(target)
            try:
                answer = await ask_broker(
                    network,
                    target,
                    request,
                    secret=secret,
                    deadline=max(2.0, config.failure_timeout * 2),
                )
            except TlsHandshakeFailed as exc:
                log_event(
                    logging.WARNING,
                    "join.seed_tls_failed",
                    seed=f"{target[0]}:{target[1]}",
                    reason=str(exc),
                )
                continue
            except UNREACHABLE as exc:
                log_event(
                    logging.INFO,
                    "join.seed_unreachable",
                    seed=f"{target[0]}:{target[1]}",
                    error=type(exc).__name__,
                )
                continue
            if answer.get("code") in (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE):
                host, port = answer.get("leader_host"), answer.get("leader_port")
                if isinstance(host, str) and isinstance(port, int):
                    targets.insert(0, (host, port))
                continue
            return answer
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


async def _prepare(
    worker: StorageWorker,
    store: Store,
    config: BrokerConfig,
    network: Network,
    secret: bytes | None = None,
) -> tuple[Identity, bool]:
    """The broker's identity, and whether it must still join its cluster.

    A brand-new broker without seeds founds a cluster of one voter, unless ``join_wait``: then
    it stores ``cluster_id`` and waits to be added (ADD_MEMBER). A brand-new broker with
    seeds asks them which cluster they form, and joins it. A broker that has an identity but
    never received a configuration was interrupted while joining, and joins again.
    """
    found = await worker.run(store.identity)
    state = await worker.run(store.raft_state)
    if found is not None:
        _check_identity(found, config)
        configured = state.snapshot_config is not None or any(
            isinstance(e.payload, ConfigEntry) for e in state.entries
        )
        if configured or config.join_wait:
            return found, False  # a member, or still waiting to be added
        if not config.seeds:
            raise JoinFailed(
                f"broker {found.broker_id} was joining cluster {found.cluster_id} and never "
                "completed; start it again with --seed HOST:PORT of a member, or with "
                f"--join-wait --cluster-id {found.cluster_id} to wait for 'client add-member'"
            )
        return found, True
    if config.join_wait:
        # No configuration at all: never campaigns, answers CLUSTER_QUERY with no members,
        # and takes part once the leader of cluster_id replicates its log to it (ADD_MEMBER).
        assert config.cluster_id is not None
        identity = await worker.run(
            store.init_identity, config.broker_id or new_broker_id(), config.cluster_id
        )
        return identity, False
    if not config.seeds:
        identity = await worker.run(
            store.init_identity,
            config.broker_id or new_broker_id(),
            config.cluster_id or new_cluster_id(),
        )
        await worker.run(store.bootstrap, Config(voters=frozenset([identity.broker_id])))
        return identity, False
    answer = await _ask_seeds(config, network, ClusterQuery(cluster_id=config.cluster_id), secret)
    if answer.get("status") != "success" or not isinstance(answer.get("cluster_id"), str):
        raise JoinFailed(
            f"seeds refused to describe their cluster: {answer.get('code')}: "
            f"{answer.get('message')}{_hint(answer)}"
        )
    identity = await worker.run(
        store.init_identity, config.broker_id or new_broker_id(), answer["cluster_id"]
    )
    return identity, True


def _hint(answer: dict[str, Any]) -> str:
    if answer.get("code") == ErrorCode.UNAUTHORIZED:
        return " (does --cluster-secret-file name the cluster's secret?)"
    return ""


async def _join(broker: Broker) -> None:
    config = broker.config
    host, port = broker.driver.self_address
    request = JoinCluster(
        broker_id=broker.broker_id, host=host, port=port, cluster_id=broker.cluster_id
    )
    while True:
        answer = await _ask_seeds(config, broker.network, request, broker.security.secret)
        if answer.get("status") == "success":
            for member in answer.get("brokers") or []:
                with contextlib.suppress(KeyError, TypeError):
                    broker.driver.hinted_addresses[member["broker_id"]] = (
                        member["host"],
                        member["port"],
                    )
            log_event(
                logging.INFO,
                "join.accepted",
                cluster_id=broker.cluster_id,
                leader=answer.get("leader_id"),
                cluster_version=answer.get("cluster_version"),
            )
            return
        if answer.get("code") in (
            ErrorCode.WRONG_CLUSTER,
            ErrorCode.BAD_REQUEST,
            ErrorCode.UNAUTHORIZED,
        ):
            log_event(
                logging.ERROR, "join.refused", code=answer.get("code"), reason=answer.get("message")
            )
            raise JoinFailed(
                f"cluster {broker.cluster_id} refused the join: {answer.get('code')}: "
                f"{answer.get('message')}{_hint(answer)}"
            )
        log_event(logging.WARNING, "join.retry", reason=answer.get("message"))
        await trio.sleep(config.failure_timeout)


@contextlib.asynccontextmanager
async def open_broker(
    config: BrokerConfig,
    *,
    network: Network = TCP,
    storage: Callable[[Path], AbstractAsyncContextManager[tuple[Any, Any]]] = (open_sqlite_storage),
) -> AsyncIterator[Broker]:
    """Start a broker and serve it for the body of the ``async with``.

    A broker with no seeds and an empty data directory founds a new single-voter cluster, and
    ``open_broker`` returns once it leads it. With seeds, it joins their cluster as a learner
    (and becomes a voter once caught up); a restarted broker rejoins from its data directory.

    Raises :class:`~trio_broker._storage.DataDirInUse` if another broker holds the data
    directory, :class:`IdentityMismatch` if the directory belongs to another identity, and
    :class:`JoinFailed` if the seeds' cluster refuses this broker.

    ``network`` and ``storage`` are seams for ``trio_broker.testing``: an in-memory network
    and storage run the same broker under a mock clock.
    """
    security = load_security(config)
    refused: JoinFailed | None = None
    plain_network = network
    if security.server_context is not None:
        assert security.client_context is not None
        network = TlsNetwork(network, security.server_context, security.client_context)
    async with storage(config.data_dir) as (worker, store):
        listeners, port = await network.listen(config.host, config.port)
        plaintext: list[trio.abc.Listener[Any]] = []
        plaintext_port = None
        try:
            if config.plaintext_port is not None:
                plaintext, plaintext_port = await plain_network.listen(
                    config.host, config.plaintext_port
                )
            identity, joining = await _prepare(worker, store, config, network, security.secret)
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
        async with trio.open_nursery() as services:
            await services.start(broker.driver.run)
            await services.start(broker.enforce_retention)
            if config.metrics_port is not None:
                broker.metrics_port = await services.start(
                    serve_metrics, broker, config.host, config.metrics_port
                )
            async with trio.open_nursery() as connections:
                await connections.start(
                    functools.partial(broker._serve_listeners, listeners, connections)
                )
                if plaintext:
                    await connections.start(
                        functools.partial(
                            broker._serve_listeners, plaintext, connections, plaintext=True
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
                            await _join(broker)
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
                        await broker._step_down()
                        await broker._shutdown(connections)
            services.cancel_scope.cancel()
    log_event(logging.INFO, "broker.stopped", data_dir=config.data_dir)
    if refused is not None:
        raise refused


async def serve_broker(
    config: BrokerConfig, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a broker until cancelled; ``task_status.started`` gets the :class:`Broker`."""
    async with open_broker(config) as broker:
        task_status.started(broker)
        await trio.sleep(math.inf)
