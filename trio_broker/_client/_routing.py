"""Where a request goes: the client's connections, its view of each cluster, and the retry
loop that follows leaders.

Routing follows the wire contract: a queue id names its cluster, and requests for a queue go to
the leader of that cluster. When the leader moves (``NOT_LEADER``, or a connection that cannot
be opened), the client refreshes its view of the cluster and retries with a bounded backoff
until the caller's own deadline. A request that may have reached a broker is never sent again,
except ``CLUSTER_QUERY``, which changes nothing.
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from .._errors import (
    BrokerError,
    ErrorCode,
    NotLeaderError,
    OutcomeUnknownError,
    ProtocolError,
    QueueNotFoundError,
    TooLargeError,
    WrongClusterError,
    error_from_wire,
)
from .._ids import cluster_of_queue, new_client_id
from .._protocol import (
    BrokerInfo,
    ClusterQuery,
    ClusterTopology,
    encode_frame,
    encode_request,
    loads_object,
)
from ._common import (
    Address,
    BrokerUnreachableError,
    ClientClosedError,
    Topology,
    fmt_address,
    structure,
    wire_name,
)
from ._connection import Connection, Counters, Lost, NotSent, open_stream

ATTEMPT_TIMEOUT = 5.0
"""Bound on opening one connection, and on one discovery attempt (connect + CLUSTER_QUERY), so
that one unreachable or silent broker does not stop the client from trying the others. Nothing
has been sent when either gives up. Operations themselves have no timeout but the caller's."""
PLACED_MEMORY = 5.0
"""Seconds a client's own create counts on its group's listed queue count (the map's count
follows by a report, within a heartbeat interval or two)."""
_BACKOFF_BASE = 0.02
_BACKOFF_MAX = 1.0


def _group_topology(view: Any, brokers: tuple[BrokerInfo, ...]) -> Topology:
    """Another group hosted by the answering broker (CLUSTER_QUERY's ``groups``,
    docs/replication.md "Several leaders"), its members at the addresses the answer gave."""
    members = set(view.voters) | set(view.learners)
    listed = tuple(
        attrs.evolve(b, role="leader" if b.broker_id == view.leader_id else "replica")
        for b in brokers
        if b.broker_id in members
    )
    leader = next((b for b in listed if b.broker_id == view.leader_id), None)
    if leader is None and view.leader_id and view.leader_host and view.leader_port:
        leader = BrokerInfo(
            broker_id=view.leader_id,
            host=view.leader_host,
            port=view.leader_port,
            role="leader",
            status="active",
        )
    return Topology(cluster_id=view.cluster_id, cluster_version=0, brokers=listed, leader=leader)


@attrs.define(eq=False)
class _Cluster:
    topology: Topology
    leader: Address | None
    generation: int = 0
    """Bumped whenever ``leader`` or ``topology`` changes; a caller that saw generation N and
    failed at the leader only clears it if nobody has updated it since."""
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)


class Router:
    """The routing half of :class:`~trio_broker.Client` (which adds the operations)."""

    def __init__(
        self,
        tasks: anyio.abc.TaskGroup,
        seeds: Sequence[Address],
        *,
        client_id: str | None,
        max_frame: int,
        max_in_flight: int,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        cluster_secret: bytes | None = None,
    ) -> None:
        self._tasks = tasks
        self._ssl_context = ssl_context
        self._token = token
        self._cluster_secret = cluster_secret
        self._seeds = list(dict.fromkeys(seeds))
        self.client_id: str = client_id if client_id is not None else new_client_id()
        """The id that names this client's read positions."""
        self._max_frame = max_frame
        self._max_in_flight = max_in_flight
        self._connections: dict[Address, Connection] = {}
        self._connect_locks: dict[Address, anyio.Lock] = {}
        self._clusters: dict[str, _Cluster] = {}
        self._placement: dict[str, int] = {}
        """The groups a new queue may land on: those CLUSTER_QUERY's ``groups`` listed last
        (with a cluster map, every data group; the metadata group is not listed), each with
        its queue count as listed (0 when the broker lists none)."""
        self._placed: dict[str, tuple[int, float]] = {}
        """Group -> (the count this client saw it reach with its own last create there,
        when): a listing taken sooner after may not count that create yet (the map's counts
        follow the groups' by a report), so for :data:`PLACED_MEMORY` seconds a group's
        count is at least that."""
        self._next_group = random.randrange(1 << 16)
        """Where ties between the least-loaded groups are broken (in turn, from a random
        start, so that many clients creating a few queues each spread them too)."""
        self._discovery_lock = anyio.Lock()
        self._counters = Counters()
        self._closed = False

    # -- routing ---------------------------------------------------------------------------------

    def _default_cluster(self) -> str:
        self._check_open()
        return next(iter(self._clusters))

    async def _known_cluster(self, cluster_id: str | None) -> str:
        if cluster_id is None:
            return self._default_cluster()
        if cluster_id not in self._clusters:
            await self._discover_more()
            if cluster_id not in self._clusters:
                raise WrongClusterError(
                    ErrorCode.WRONG_CLUSTER, f"none of the seed brokers is in cluster {cluster_id}"
                )
        return cluster_id

    def _group_for_new_queue(self) -> str | None:
        """The group the next queue lands on when the caller names none: the listed group
        with fewest queues, ties in turn (docs/replication.md, "Where a new queue lands");
        None for a cluster that lists no groups (one group: its broker decides)."""
        self._check_open()
        if not self._placement:
            return None
        now = anyio.current_time()
        counts = {}
        for g, listed in self._placement.items():
            placed, when = self._placed.get(g, (0, -math.inf))
            counts[g] = max(listed, placed) if now - when < PLACED_MEMORY else listed
        groups = list(counts)
        start = self._next_group % len(groups)
        turn = groups[start:] + groups[:start]
        group = min(turn, key=lambda g: counts[g])
        self._next_group += 1
        self._placed[group] = (counts[group] + 1, now)
        return group

    async def _cluster_of(self, queue_id: str) -> str:
        cid = cluster_of_queue(queue_id)
        if cid is None:
            # Not a well-formed id: let the default cluster's leader say what it makes of it.
            return self._default_cluster()
        if cid not in self._clusters:
            await self._discover_more()
            if cid not in self._clusters:
                raise QueueNotFoundError(
                    ErrorCode.QUEUE_NOT_FOUND,
                    f"queue {queue_id} belongs to cluster {cid}, "
                    "and none of the seed brokers is in that cluster",
                )
        return cid

    async def _leader_call(
        self, cid: str, request: Any, *, retry_unavailable: bool = True
    ) -> dict[str, Any]:
        frame = self._frame(request)
        attempt = 0
        while True:
            self._check_open()
            cluster = self._clusters[cid]
            seen = cluster.generation
            address = cluster.leader
            if address is None:
                await self._refresh(cid, seen=seen)
                seen = cluster.generation
                address = cluster.leader
            if address is not None:
                try:
                    response = await self._exchange(address, frame)
                except NotSent:
                    self._leader_failed(cid, seen, None)
                except Lost as exc:
                    self._check_open()
                    raise OutcomeUnknownError(
                        ErrorCode.UNAVAILABLE,
                        f"connection to {fmt_address(address)} lost after the "
                        f"{wire_name(request)} request was sent; it may or may not have been "
                        f"applied ({exc.reason})",
                        outcome="unknown",
                        operation=wire_name(request),
                        broker=fmt_address(address),
                    ) from None
                else:
                    if response.get("status") != "error":
                        return response
                    error = error_from_wire(response)
                    if isinstance(error, NotLeaderError):
                        self._leader_failed(cid, seen, self._hinted_leader(cluster, error))
                    elif (
                        error.code != ErrorCode.UNAVAILABLE
                        or isinstance(error, OutcomeUnknownError)
                        or not retry_unavailable
                    ):
                        raise error
                    else:
                        # Refused without being applied (shutting down, no quorum): the leader
                        # may be moving; ask the cluster again.
                        self._leader_failed(cid, seen, None)
            attempt = await self._backoff(attempt)

    def _leader_failed(self, cid: str, seen: int, new_leader: Address | None) -> None:
        cluster = self._clusters[cid]
        if cluster.generation == seen:
            cluster.leader = new_leader
            cluster.generation += 1

    @staticmethod
    def _hinted_leader(cluster: _Cluster, error: BrokerError) -> Address | None:
        host = error.details.get("leader_host")
        port = error.details.get("leader_port")
        if isinstance(host, str) and host and isinstance(port, int) and 0 < port <= 65535:
            return host, port
        leader_id = error.details.get("leader_id")
        for broker in cluster.topology.brokers:
            if leader_id is not None and broker.broker_id == leader_id:
                return broker.host, broker.port
        return None

    async def _backoff(self, attempt: int) -> int:
        self._counters.retries += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** min(attempt, 16))
        await anyio.sleep(delay * (0.5 + random.random() / 2))
        return attempt + 1

    # -- topology --------------------------------------------------------------------------------

    async def _discover(self) -> None:
        errors = await self._discover_more()
        if not self._clusters:
            raise BrokerUnreachableError(errors)

    async def _discover_more(self) -> list[tuple[Address, str]]:
        """Ask every seed not already known as a member of a discovered cluster, once."""
        errors: list[tuple[Address, str]] = []
        async with self._discovery_lock:
            for address in self._seeds:
                if self._cluster_with(address) is not None:
                    continue
                reason = await self._try_query(address)
                if reason is not None:
                    errors.append((address, reason))
        return errors

    def _cluster_with(self, address: Address) -> str | None:
        for cid, cluster in self._clusters.items():
            if any((b.host, b.port) == address for b in cluster.topology.brokers):
                return cid
        return None

    async def _try_query(self, address: Address) -> str | None:
        """One bounded CLUSTER_QUERY attempt; the reason it failed, or None."""
        with anyio.move_on_after(ATTEMPT_TIMEOUT):
            try:
                await self._query(address)
            except (NotSent, Lost) as exc:
                return exc.reason
            except BrokerError as exc:
                if exc.code == ErrorCode.UNAUTHORIZED:
                    raise  # a wrong token or secret: asking elsewhere will not help
                return str(exc)
            return None
        return f"no answer within {ATTEMPT_TIMEOUT:g} s"

    async def _refresh(self, cid: str, *, seen: int | None) -> Topology | None:
        """Ask the cluster's members (then the seeds) for its topology until one names a leader.

        With ``seen``, skip the work if the cluster changed since generation ``seen`` (so that
        many tasks failing at once cause one refresh, not one each).
        Returns the freshest topology obtained (possibly without a leader), or None.
        """
        cluster = self._clusters[cid]
        async with cluster.lock:
            if seen is not None and cluster.generation != seen:
                return cluster.topology  # someone refreshed (or learnt a leader) meanwhile
            self._counters.topology_refreshes += 1
            members = list(cluster.topology.brokers)
            members.sort(key=lambda b: b.role != "leader")
            candidates = [(b.host, b.port) for b in members]
            candidates += [a for a in self._seeds if self._cluster_with(a) in (None, cid)]
            if not candidates:
                # A group no seed hosts, listed without a leader yet: the seeds list every
                # group of their cluster, with its leader once they know it.
                candidates = list(self._seeds)
            found: Topology | None = None
            for address in dict.fromkeys(candidates):
                before = cluster.generation
                if await self._try_query(address) is not None:
                    continue
                if cluster.generation == before:
                    continue  # it answered for another cluster
                found = cluster.topology
                if cluster.leader is not None:
                    return found
            return found

    async def _query(
        self, address: Address, details: bool = False, cluster_id: str | None = None
    ) -> Topology:
        frame = self._frame(
            ClusterQuery(client_id=self.client_id, details=details or None, cluster_id=cluster_id)
        )
        response = await self._exchange(address, frame)
        if response.get("status") == "error":
            raise error_from_wire(response)
        wire = structure(response, ClusterTopology)
        brokers = tuple(wire.brokers)
        leader = None
        if wire.leader_id is not None:
            leader = next((b for b in brokers if b.broker_id == wire.leader_id), None)
        if leader is None:
            leader = next((b for b in brokers if b.role == "leader"), None)
        topology = Topology(
            cluster_id=wire.cluster_id,
            cluster_version=wire.cluster_version,
            brokers=brokers,
            leader=leader,
            self_role=wire.self_role,
            self_id=wire.self_id,
        )
        self._store(topology)
        for view in wire.groups or ():
            if view.cluster_id != wire.cluster_id:
                self._store(_group_topology(view, brokers))
        if wire.groups:
            self._placement = {view.cluster_id: view.queue_count or 0 for view in wire.groups}
        return topology

    def _store(self, topology: Topology) -> None:
        leader = (topology.leader.host, topology.leader.port) if topology.leader else None
        cluster = self._clusters.get(topology.cluster_id)
        if cluster is None:
            self._clusters[topology.cluster_id] = _Cluster(topology, leader)
        else:
            cluster.topology = topology
            cluster.leader = leader
            cluster.generation += 1

    # -- the wire --------------------------------------------------------------------------------

    def _frame(self, request: Any) -> bytes:
        try:
            payload = encode_request(request)
        except TypeError as exc:  # orjson.JSONEncodeError
            raise TypeError(f"data is not a JSON value the broker can store: {exc}") from None
        if len(payload) > self._max_frame:
            raise TooLargeError(
                ErrorCode.TOO_LARGE,
                f"request of {len(payload)} bytes is larger than the maximum frame of "
                f"{self._max_frame} bytes",
            )
        return encode_frame(payload)

    async def _exchange(self, address: Address, frame: bytes) -> dict[str, Any]:
        connection = await self._connection(address)
        payload = await connection.call(frame)
        try:
            return loads_object(payload)
        except ProtocolError as exc:
            raise ProtocolError(f"malformed response from {fmt_address(address)}: {exc.message}")

    async def _connection(self, address: Address) -> Connection:
        self._check_open()
        connection = self._connections.get(address)
        if connection is not None and not connection.closed:
            return connection
        lock = self._connect_locks.setdefault(address, anyio.Lock())
        async with lock:
            self._check_open()
            connection = self._connections.get(address)
            if connection is not None and not connection.closed:
                return connection
            stream = None
            with anyio.move_on_after(ATTEMPT_TIMEOUT):
                stream = await open_stream(
                    address,
                    ssl_context=self._ssl_context,
                    token=self._token,
                    cluster_secret=self._cluster_secret,
                    max_frame=self._max_frame,
                )
            if stream is None:
                raise NotSent(f"no connection within {ATTEMPT_TIMEOUT:g} s")
            try:
                connection = Connection(
                    address,
                    stream,
                    max_in_flight=self._max_in_flight,
                    max_frame=self._max_frame,
                    counters=self._counters,
                )
                await self._tasks.start(self._run_connection, connection)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
            self._connections[address] = connection
            return connection

    async def _run_connection(
        self,
        connection: Connection,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await connection.run(task_status=task_status)
        finally:
            if self._connections.get(connection.address) is connection:
                del self._connections[connection.address]

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this client is closed")

    def _close(self) -> None:
        self._closed = True
        for connection in list(self._connections.values()):
            connection.fail("client closed")
        self._tasks.cancel_scope.cancel()
