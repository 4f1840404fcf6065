"""Membership: who a broker is, how it joins a cluster, and the operator's requests.

Two sides. A starting broker finds its identity (:func:`prepare`) and, when new, asks its seeds
to let it join (:func:`join_cluster`, the design's diagram 4). A member serves JOIN_CLUSTER,
REMOVE_MEMBER, TRANSFER_LEADERSHIP, SNAPSHOT and ADD_MEMBER: on the leader, through the log;
elsewhere, by forwarding them to the leader (as it forwards the balancer's REBALANCE and
DRAIN_BROKER to the metadata group's leader, :mod:`._balancing`). It also draws the cluster as
CLUSTER_QUERY shows it, and hands the leadership over when a leader shuts down. These take what
they use as arguments, or a :class:`Member` (the broker, seen through the few things membership
reads), so nothing here imports the broker back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

from .. import _core
from .._core._raft_messages import ChangeAction, Config, ConfigChange, ConfigEntry
from .._errors import BrokerError, ErrorCode
from .._ids import new_broker_id, new_cluster_id
from .._protocol import (
    AddMember,
    BrokerInfo,
    ClusterQuery,
    ClusterTopology,
    Done,
    JoinCluster,
    Joined,
    LeadershipTransferred,
    MemberAdded,
    RemoveMember,
    Request,
    Response,
    SnapshotTaken,
    TakeSnapshot,
    TransferLeadership,
)
from .._protocol._messages import DrainBroker, DrainState, Rebalance, Rebalanced
from .._storage import Identity, StorageWorker, Store
from ._config import BrokerConfig
from ._dial import UNREACHABLE, ask_broker, unreachable_reason
from ._driver import RaftDriver
from ._leadership import SHUTDOWN_WITHOUT_PEERS
from ._log import log_event
from ._network import Network, TlsHandshakeFailed

T = TypeVar("T")


class IdentityMismatch(Exception):
    """The data directory belongs to another broker or cluster than the configuration says."""


class JoinFailed(Exception):
    """A new broker could not join the cluster its seeds belong to."""


class Member(Protocol):
    """What the membership requests read and use of a running broker."""

    broker_id: str
    cluster_id: str
    config: BrokerConfig
    driver: RaftDriver

    def topology(self, *, details: bool = False, plaintext: bool = False) -> ClusterTopology: ...

    async def submit(self, command: Any) -> Any: ...

    async def ask(
        self, address: tuple[str, int], request: Request, cls: type[T], deadline: float
    ) -> T | BrokerError:
        """One request to another broker, proved with the cluster secret; raises one of
        :data:`~._dial.UNREACHABLE`."""
        ...


# -- a member's side: the operator's requests -------------------------------------------------


async def join(member: Member, request: JoinCluster) -> Response | BrokerError:
    """Diagram 4 on the leader: record the address, add a learner, answer with the view.

    The learner then receives the log (or a DATA_SYNC snapshot) like any replica, and the
    leader promotes it to voter once it has caught up.
    """
    driver = member.driver
    if not driver.node.is_leader:
        return await forward_to_leader(member, request)
    node = driver.node
    # The address first, so that every member can reach the broker once it is a member;
    # a broker that is already a member (rejoining after a restart) only updates it.
    result = await member.submit(
        _core.SetBrokerAddress(request.broker_id, request.host, request.port)
    )
    if isinstance(result, BrokerError):
        return result
    if request.broker_id not in node.config.members:
        result = await driver.change_membership(
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
    topology = member.topology()
    return Joined(
        cluster_id=member.cluster_id,
        cluster_version=topology.cluster_version,
        leader_id=member.broker_id,
        brokers=topology.brokers,
    )


async def remove(member: Member, request: RemoveMember) -> Response | BrokerError:
    driver = member.driver
    if not driver.node.is_leader:
        return await forward_to_leader(member, request)
    if request.broker_id not in driver.node.config.members:
        return BrokerError(
            ErrorCode.BAD_REQUEST, f"{request.broker_id} is not a member of {member.cluster_id}"
        )
    result = await driver.change_membership(ConfigChange(ChangeAction.REMOVE, request.broker_id))
    if isinstance(result, BrokerError):
        return result
    log_event(
        logging.INFO,
        "membership.removed",
        broker=request.broker_id,
        cluster_version=driver.node.cluster_version,
    )
    return Done()


async def transfer(member: Member, request: TransferLeadership) -> Response | BrokerError:
    """Hand the leadership over (thesis 3.10) and answer once the new leader leads."""
    if not member.driver.node.is_leader:
        return await forward_to_leader(member, request)
    result = await transfer_leadership(member.driver, member.config, request.broker_id)
    if isinstance(result, BrokerError):
        return result
    return LeadershipTransferred(leader_id=result, term=member.driver.node.term)


async def transfer_leadership(
    driver: RaftDriver, config: BrokerConfig, target: str | None = None
) -> str | BrokerError:
    """On the leader: hand the leadership to ``target`` (None: the most caught-up voter);
    returns the new leader's id once it leads, or the error that stopped it. Waits at most
    two failure timeouts (the core gives up on the target after one)."""
    with trio.move_on_after(config.failure_timeout * 2):
        return await driver.transfer_leadership(target)
    return BrokerError(
        ErrorCode.UNAVAILABLE,
        f"leadership transfer to {target or 'the most caught-up voter'} not confirmed in "
        f"{config.failure_timeout * 2:g} s: the election it started is not over",
    )


async def take_snapshot(member: Member, _request: TakeSnapshot) -> Response:
    index, term = await member.driver.snapshot_now()
    return SnapshotTaken(broker_id=member.broker_id, snapshot_index=index, snapshot_term=term)


async def add_member(member: Member, request: AddMember) -> Response | BrokerError:
    """The operator's side of a join: the leader asks the broker at ``host:port`` who it
    is, and adds it as a learner only if it is of this cluster and a member of none
    (started with ``--join-wait --cluster-id`` and an empty data directory)."""
    if not member.driver.node.is_leader:
        return await forward_to_leader(member, request)
    cluster_id = member.cluster_id
    where = f"{request.host}:{request.port}"
    deadline = member.config.failure_timeout * 4
    try:
        # With a cluster secret, the new broker must accept this broker's proof: it holds
        # the same secret, or it could never replicate or vote.
        answer = await member.ask(
            (request.host, request.port),
            ClusterQuery(cluster_id=cluster_id),
            ClusterTopology,
            deadline,
        )
    except UNREACHABLE as exc:
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"cannot reach a broker at {where}: {unreachable_reason(exc, deadline)}",
        )
    if isinstance(answer, BrokerError) and answer.code == ErrorCode.UNAUTHORIZED:
        return BrokerError(
            ErrorCode.UNAUTHORIZED,
            f"the broker at {where} refused this cluster's secret: start it with the same "
            f"--cluster-secret-file (and give add-member its main port, not a plaintext "
            f"one): {answer.message}",
        )
    theirs = (
        answer.details.get("cluster_id") if isinstance(answer, BrokerError) else answer.cluster_id
    )
    if (isinstance(answer, BrokerError) and answer.code == ErrorCode.WRONG_CLUSTER) or (
        isinstance(answer, ClusterTopology) and answer.cluster_id != cluster_id
    ):
        return BrokerError(
            ErrorCode.WRONG_CLUSTER,
            f"the broker at {where} belongs to cluster {theirs}, not "
            f"{cluster_id}; a broker is a member of one cluster only (start a new one "
            f"with --join-wait --cluster-id {cluster_id} and an empty data directory)",
        )
    if isinstance(answer, BrokerError) or answer.self_id is None:
        reason = answer.message if isinstance(answer, BrokerError) else None
        return BrokerError(
            ErrorCode.BAD_REQUEST, f"the broker at {where} did not say who it is: {reason}"
        )
    broker_id = answer.self_id
    if broker_id not in member.driver.node.config.members and answer.brokers:
        return BrokerError(
            ErrorCode.BAD_REQUEST,
            f"broker {broker_id} at {where} already has a membership of its own (it founded "
            "a cluster, or was removed from this one): only a broker started with "
            "--join-wait and an empty data directory can be added",
        )
    joined = await join(
        member,
        JoinCluster(
            broker_id=broker_id, host=request.host, port=request.port, cluster_id=cluster_id
        ),
    )
    if isinstance(joined, BrokerError):
        return joined
    return MemberAdded(broker_id=broker_id, cluster_version=member.driver.node.cluster_version)


_FORWARDED_ANSWERS: dict[type, type] = {
    JoinCluster: Joined,
    RemoveMember: Done,
    TransferLeadership: LeadershipTransferred,
    AddMember: MemberAdded,
    Rebalance: Rebalanced,
    DrainBroker: DrainState,
}
"""What the leader answers each request a member forwards to it."""


async def forward_to_leader(member: Member, request: Request) -> Response | BrokerError:
    """Membership requests may reach any member; it passes them on to the leader."""
    error = member.driver.not_leader_error()
    host, port = error.details.get("leader_host"), error.details.get("leader_port")
    if host is None or port is None:
        return error
    # The leader's own work may take a bounded time too (an ADD_MEMBER reaches the new
    # broker first): wait for longer than that.
    # (A REBALANCE runs a whole balancer round: group actions of up to four failure timeouts.)
    slow = isinstance(request, AddMember | Rebalance)
    deadline = member.config.failure_timeout * (10 if slow else 4)
    try:
        # Proved with this broker's own secret: it checked the requester's.
        return await member.ask((host, port), request, _FORWARDED_ANSWERS[type(request)], deadline)
    except UNREACHABLE as exc:
        return BrokerError(
            ErrorCode.UNAVAILABLE,
            f"could not reach the leader: {unreachable_reason(exc, deadline)}; the request "
            "may or may not have been applied",
            outcome="unknown",
        )


def topology(
    driver: RaftDriver,
    cluster_id: str,
    plaintext_port_of: Callable[[str], int | None] | None = None,
    *,
    details: bool = False,
) -> ClusterTopology:
    """The cluster as CLUSTER_QUERY shows it. With ``plaintext_port_of``, as the plaintext
    listener shows it: each member at its plaintext port (members whose plaintext port is
    not known here are left out), so that clients of the original design reconnect to a
    listener they can speak to. With ``details``, each member's membership and lag."""
    node = driver.node
    brokers = []
    last = node.log.last_index
    for member_id, view in node.member_statuses().items():
        if member_id == driver.broker_id:
            address = driver.self_address
        else:
            address = driver.address_of(member_id)
        if address is not None and plaintext_port_of is not None:
            port = plaintext_port_of(member_id)
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
                lag=_lag(driver, member_id, last) if details else None,
            )
        )
    return ClusterTopology(
        cluster_id=cluster_id,
        cluster_version=node.cluster_version,
        self_role="leader" if node.is_leader else "replica",
        brokers=brokers,
        self_id=driver.broker_id,
        leader_id=node.leader_id,
    )


def _lag(driver: RaftDriver, member_id: str, last_index: int) -> int | None:
    """Log entries ``member_id`` lacks, as the leader knows it; None elsewhere."""
    node = driver.node
    if not node.is_leader:
        return None
    if member_id == driver.broker_id:
        return 0
    progress = node.progress.get(member_id)
    return None if progress is None else max(0, last_index - progress.match)


async def step_down(driver: RaftDriver, config: BrokerConfig) -> None:
    """A leader that shuts down first hands its leadership to the most caught-up voter,
    so that writes resume within a round trip instead of after a failure timeout. Bounded
    by min(shutdown_grace, failure_timeout); meanwhile new requests are answered
    NOT_LEADER naming that voter, and requests already proposed still commit.

    First, leader or not, the broker's peer links learn that it is shutting down: a link lost
    from then on is expected (its peers may be stopping too), said at INFO (docs/operations.md,
    "Logs")."""
    if driver.peers is not None:
        driver.peers.mux.shutting_down = True
    node = driver.node
    if not node.is_leader or not node.config.voters - {driver.broker_id}:
        return
    term = node.term
    limit = min(config.shutdown_grace, config.failure_timeout)
    driver.leadership.shutting_down = True
    target = node.best_transfer_target()  # (what transfer_leadership(None) would choose)
    with trio.move_on_after(limit):
        result = await driver.transfer_leadership(target)
        if isinstance(result, BrokerError):
            _step_down_failed(driver, target, result.message)
        else:
            log_event(
                logging.INFO,
                "broker.stepped_down",
                broker_id=driver.broker_id,
                term=term,
                new_leader=result,
                new_term=driver.node.term,
            )
        return
    _step_down_failed(driver, target, f"no new leader in {limit:g} s")


def _step_down_failed(driver: RaftDriver, target: str | None, reason: str) -> None:
    """A WARNING, unless the peers the hand-off needed are gone (as when every broker of the
    cluster stops at once): then it was expected, and says so at INFO (docs/operations.md,
    "Logs")."""
    gone = driver.leadership.gone_at_shutdown(target)
    if gone:
        log_event(
            logging.INFO,
            "broker.step_down_failed",
            reason=reason,
            peers_gone=gone,
            expected=SHUTDOWN_WITHOUT_PEERS,
        )
    else:
        log_event(logging.WARNING, "broker.step_down_failed", reason=reason)


# -- a starting broker's side: identity and joining -------------------------------------------


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


async def ask_seeds(
    config: BrokerConfig, network: Network, request: Request, cls: type[T], secret: bytes | None
) -> T | BrokerError:
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
                    cls,
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
            if isinstance(answer, BrokerError) and answer.code in (
                ErrorCode.NOT_LEADER,
                ErrorCode.UNAVAILABLE,
            ):
                host, port = answer.details.get("leader_host"), answer.details.get("leader_port")
                if isinstance(host, str) and isinstance(port, int):
                    targets.insert(0, (host, port))
                continue
            return answer
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


def _hint(error: BrokerError) -> str:
    if error.code == ErrorCode.UNAUTHORIZED:
        return " (does --cluster-secret-file name the cluster's secret?)"
    return ""


async def prepare(
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
    answer = await ask_seeds(
        config, network, ClusterQuery(cluster_id=config.cluster_id), ClusterTopology, secret
    )
    if isinstance(answer, BrokerError):
        raise JoinFailed(
            f"seeds refused to describe their cluster: {answer.code}: "
            f"{answer.message}{_hint(answer)}"
        )
    # A broker hosting several groups answers about one it leads; the cluster's own group,
    # which a new broker joins first, is named apart (docs/replication.md, "Several leaders").
    cluster_id = config.cluster_id or answer.metadata_group or answer.cluster_id
    identity = await worker.run(
        store.init_identity, config.broker_id or new_broker_id(), cluster_id
    )
    return identity, True


async def join_cluster(
    config: BrokerConfig,
    network: Network,
    secret: bytes | None,
    request: JoinCluster,
    hinted_addresses: dict[str, tuple[str, int]],
) -> None:
    """A new broker asks its seeds to let it join (retrying until it is let in, or refused);
    the members' addresses the answer carries go to ``hinted_addresses``."""
    while True:
        answer = await ask_seeds(config, network, request, Joined, secret)
        if not isinstance(answer, BrokerError):
            for member in answer.brokers:
                hinted_addresses[member.broker_id] = (member.host, member.port)
            log_event(
                logging.INFO,
                "join.accepted",
                cluster_id=request.cluster_id,
                leader=answer.leader_id,
                cluster_version=answer.cluster_version,
            )
            return
        if answer.code in (ErrorCode.WRONG_CLUSTER, ErrorCode.BAD_REQUEST, ErrorCode.UNAUTHORIZED):
            log_event(logging.ERROR, "join.refused", code=answer.code, reason=answer.message)
            raise JoinFailed(
                f"cluster {request.cluster_id} refused the join: {answer.code}: "
                f"{answer.message}{_hint(answer)}"
            )
        log_event(logging.WARNING, "join.retry", reason=answer.message)
        await trio.sleep(config.failure_timeout)
