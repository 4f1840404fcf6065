"""The metadata group at runtime (docs/replication.md, "Stage 2: the metadata group").

A cluster founded with ``--groups N`` (and a replication factor, default 3) keeps its
:class:`~trio_broker._core._metadata.ClusterMap` as replicated state of its cluster group,
which becomes the *metadata group*: the map's commands are entries of its log
(``_protocol/_entries.py``, ``METADATA_PAYLOADS``), applied with the queue state and kept in
its store (``work_meta``, which snapshots copy). Every broker is a member of the metadata
group, so every broker holds the whole map; the data groups live on the brokers the map
places them on.

**The seam** (for the balancer, ``_runtime/_balancing.py``, and anything else that acts on
the map). One :class:`MetaMap` per broker, ``broker.host.meta``:

- ``meta.map``: the last map this broker loaded (read-only: never mutate it), ``None`` while
  the cluster has none (one group, or a stage-1 list: every broker hosts every group);
- ``await meta.wait_changed()``: until the next map is loaded (after every applied metadata
  command, and after a snapshot);
- ``await meta.propose(command)``: commit a metadata command; proposed here when this broker
  leads the metadata group, else sent (``METADATA_PROPOSE``) to its leader. Returns the
  command's result (``MapChanged``, ``QueuePlaced``, ``CommandRejected``) or a
  :class:`~trio_broker._errors.BrokerError` (not committed, or outcome unknown);
- ``meta.is_leader``: whether this broker leads the metadata group (where the balancer runs);
- ``meta.observed_leaders()``: group id -> its leader as this broker knows it (its own
  groups' from their consensus cores, the others' as a broker hosting them last said,
  :class:`LeaderBoard`).

And ``broker.host`` (:class:`~._groups.GroupHost`): ``host.replica(group_id)`` is this
broker's running replica of a group (its ``driver`` changes that group's membership and
leadership), ``None`` when it hosts none. **Hosting follows the map by itself**: on every
map change each broker opens a replica of every group whose voters, learners or move target
name it, and stops one the map no longer places on it (its data is moved aside to
``data_dir/groups/removed/``, never deleted: the operator may). So a replica move is:
``StartReplicaMove`` committed (the target opens an empty replica that waits to be added),
then the group's leader adds it as a learner and promotes it once caught up, then removes
the source; after each committed change of a group's membership its leader reports it
(:func:`report_replicas`, ``SetGroupReplicas``) and the map moves on: the move completes and
the source stops hosting the group.

Founding with R > 1 (:func:`found_map`): the founder waits until ``founding_brokers`` brokers
(itself included) are voters of the metadata group, then places the groups over them with
``initial_placement`` (``FoundCluster``); each placed broker then creates its replicas with
the same initial voters (as a multi-node Raft bootstrap), so leadership is spread from the
start. ``cluster --nodes N`` passes ``founding_brokers = N``; a founder alone (the default, 1)
places every group on itself and the replication factor is reached as brokers join (by the
balancer's moves). Brokers that join after founding are registered in the map
(``RegisterBroker``, :func:`register_brokers`, by the metadata leader), and the metadata
leader records what its failure detector decides about each (``SetBrokerAlive``,
:func:`track_liveness`), so ``alive`` in the map (what the balancer reads) follows it.

(A little over the ~600 lines a module keeps to: the seam, founding, the leaders' duties and
the leader board all act on the one map, and read best together.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from .._core._commands import CommandRejected, MapCommand
from .._core._metadata import (
    BrokerAddress,
    ClusterMap,
    GroupRecord,
    MapChanged,
    MetadataResult,
    QueuePlaced,
    RegisterBroker,
    SetBrokerAlive,
    SetGroupReplicas,
    SetQueueCount,
)
from .._core._placement import found_cluster
from .._errors import BrokerError, ErrorCode
from .._ids import new_cluster_id
from .._protocol import (
    BrokerInfo,
    ClusterQuery,
    ClusterTopology,
    MetadataApplied,
    ProposeMetadata,
)
from .._protocol._entries import payload_from_obj, payload_to_obj
from ._dial import UNREACHABLE
from ._log import log_event
from ._queue_counts import QueueCounter

if TYPE_CHECKING:
    from ._broker import Broker

LEADER_TTL_REFRESHES = 3
"""A leader another broker reported is trusted for this many refresh intervals."""


def hosted_by_map(cmap: ClusterMap, broker_id: str) -> set[str]:
    """The groups the map places on ``broker_id``: those it is a voter or learner of, and
    those moving a replica to it (its replica must exist before it is added)."""
    return {
        g
        for g, record in cmap.groups.items()
        if broker_id in record.replicas
        or (record.move is not None and record.move.target == broker_id)
    }


def founding_voter(record: GroupRecord, broker_id: str) -> bool:
    """Whether ``broker_id`` creates its replica of the group with the founding voters (the
    group's configuration was never changed since ``FoundCluster``); otherwise its replica
    starts empty and waits to be added by the group's leader."""
    return record.config_version == 1 and broker_id in record.voters and not record.learners


class MetaMap:
    """One broker's view of the cluster map, and its way to change it (see the module)."""

    def __init__(self, primary: Broker, on_change: Callable[[], None] = lambda: None) -> None:
        self.primary = primary
        self.on_change = on_change
        self.map: ClusterMap | None = None
        self._changed = trio.Event()
        self._dirty = trio.Event()
        self.board = LeaderBoard(primary)
        self.hosted_leaders: Callable[[], Mapping[str, str | None]] = dict
        """The leaders of the groups hosted here (set by the host)."""
        self.founding = False
        """This broker is founding the map (waiting for its founding brokers): queues are
        created once the groups exist."""
        self.counters: dict[str, QueueCounter] = {}
        """Group -> the queue count of a group hosted here (kept while this broker leads it)."""
        driver = getattr(primary, "driver", None)  # (stand-ins in tests may have none)
        if driver is not None:
            driver.may_promote = self.may_promote

    def may_promote(self, learner: str) -> bool:
        """Whether the metadata group's leader promotes a caught-up learner (docs/replication.md,
        "The metadata group's voters"): with a map, only while fewer voters than the cluster's
        ``metadata_voters`` are alive (so a dead voter is replaced), and never beyond one voter
        more than that; without (founding, a stage-1 list), always."""
        cmap = self.map
        if cmap is None or cmap.settings is None:
            return True
        node = self.primary.driver.node
        cap = cmap.settings.metadata_voters
        statuses = node.member_statuses()
        voters = node.config.voters
        alive = [v for v in voters if (view := statuses.get(v)) and view.status == "active"]
        return len(alive) < cap and len(voters) <= cap

    @property
    def is_leader(self) -> bool:
        return self.primary.driver.node.is_leader

    @property
    def founded(self) -> bool:
        return self.map is not None

    def note_applied(self) -> None:
        """A metadata command was applied, or a snapshot installed: load the map again."""
        self._dirty.set()

    async def load(self) -> None:
        primary = self.primary
        cmap = await primary._worker.run(primary._store.cluster_map)
        if cmap.settings is None:
            return
        if self.map is None or cmap.version != self.map.version:
            self.map = cmap
            self._changed.set()
            self._changed = trio.Event()
            self.on_change()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def run(self) -> None:
        """Load the map again whenever a metadata command was applied."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            await self.load()

    def counter(self, replica: Broker) -> QueueCounter:
        """The queue counter of a group replica hosted here (made on first use)."""
        counter = self.counters.get(replica.cluster_id)
        if counter is None or counter.replica is not replica:
            counter = self.counters[replica.cluster_id] = QueueCounter(replica)
        return counter

    def queue_count(self, group_id: str) -> int | None:
        """How many queues ``group_id`` holds as far as this broker knows: counted in its own
        state while this broker leads it (the freshest), else as the map counts them."""
        counter = self.counters.get(group_id)
        estimate = None if counter is None else counter.estimate()
        if estimate is not None:
            return estimate
        return None if self.map is None else self.map.queue_counts.get(group_id)

    def observed_leaders(self) -> dict[str, str | None]:
        leaders = self.board.leaders()
        leaders.update(self.hosted_leaders())
        return leaders

    def leader_of(self, group_id: str) -> str | None:
        """The group's leader as this broker observed it: its own consensus core's for a
        group hosted here, else what a broker hosting it said lately (:class:`LeaderBoard`,
        within :data:`LEADER_TTL_REFRESHES` refreshes); None otherwise. Never a guess (the
        map's preferred leader may be down or not lead yet): CLUSTER_QUERY then names no
        leader and NOT_LEADER no redirect, and a client asks again (docs/replication.md, "A
        leader only when observed")."""
        return self.observed_leaders().get(group_id)

    def address(self, broker_id: str | None) -> tuple[str, int] | None:
        if self.map is None or broker_id is None:
            return None
        record = self.map.broker(broker_id)
        return None if record is None else (record.host, record.port)

    def not_leader(self, group_id: str) -> BrokerError:
        """NOT_LEADER for a request of a group this broker does not host, naming its leader."""
        leader = self.leader_of(group_id)
        details: dict[str, Any] = {"cluster_id": group_id}
        if leader is not None:
            details["leader_id"] = leader
            address = self.address(leader)
            if address is not None:
                details["leader_host"], details["leader_port"] = address
        return BrokerError(
            ErrorCode.NOT_LEADER,
            f"this broker does not host group {group_id}"
            + (f"; its leader is {leader}" if leader else ""),
            **details,
        )

    def topology(self, group_id: str) -> ClusterTopology | None:
        """CLUSTER_QUERY about a group this broker does not host, from the map: its voters
        and learners, its leader as known here; ``self_role`` ``replica`` (an original-design
        client then goes to the leader listed)."""
        record = None if self.map is None else self.map.group(group_id)
        if record is None:
            return None
        leader = self.leader_of(group_id)
        brokers = []
        for broker_id in record.replicas:
            address = self.address(broker_id)
            if address is not None:
                brokers.append(
                    BrokerInfo(
                        broker_id=broker_id,
                        host=address[0],
                        port=address[1],
                        role="leader" if broker_id == leader else "replica",
                        status="active" if self.map.is_alive(broker_id) else "inactive",
                    )
                )
        return ClusterTopology(
            cluster_id=group_id,
            cluster_version=record.config_version,
            self_role="replica",
            brokers=brokers,
            self_id=self.primary.broker_id,
            leader_id=leader,
        )

    async def propose(self, command: Any) -> MetadataResult | BrokerError:
        """Commit a metadata command (see the module): here when this broker leads the
        metadata group, else through its leader."""
        primary = self.primary
        if primary.driver.node.is_leader:
            return await primary.submit(command)
        error = primary.driver.not_leader_error()
        host, port = error.details.get("leader_host"), error.details.get("leader_port")
        if host is None or port is None:
            return error
        deadline = primary.config.failure_timeout * 4
        request = ProposeMetadata(command=payload_to_obj(command), cluster_id=primary.cluster_id)
        try:
            answer = await primary.ask((host, port), request, MetadataApplied, deadline)
        except UNREACHABLE as exc:
            return BrokerError(
                ErrorCode.UNAVAILABLE,
                f"could not reach the metadata leader ({type(exc).__name__}); the command "
                "may or may not have been applied",
                outcome="unknown",
            )
        if isinstance(answer, BrokerError):
            if answer.code in (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE):
                return answer
            return CommandRejected(str(answer.code), answer.message)
        if answer.queue_id is not None and answer.group_id is not None:
            return QueuePlaced(answer.queue_id, answer.group_id, answer.version)
        return MapChanged(answer.version)


async def propose_here(broker: Broker, request: ProposeMetadata) -> Any:
    """METADATA_PROPOSE on the metadata group's leader (a member answers NOT_LEADER naming
    it: the proposer asks it next)."""
    if not broker.driver.node.is_leader:
        return broker.driver.not_leader_error()
    try:
        command = payload_from_obj(request.command)
    except Exception as exc:  # (RemoteProtocolError: a malformed command)
        return BrokerError(ErrorCode.BAD_REQUEST, f"not a metadata command: {exc}")
    if not isinstance(command, MapCommand):
        return BrokerError(ErrorCode.BAD_REQUEST, "not a metadata command")
    result = await broker.submit(command)
    if isinstance(result, BrokerError):
        return result
    if isinstance(result, CommandRejected):
        return BrokerError(result.code, result.message)
    if isinstance(result, QueuePlaced):
        return MetadataApplied(result.version, result.queue_id, result.group_id)
    return MetadataApplied(result.version)


# -- founding -------------------------------------------------------------------------------------


async def found_map(primary: Broker, meta: MetaMap, groups: int) -> None:
    """The founder: once ``founding_brokers`` brokers vote in the metadata group and their
    addresses are known, place ``groups`` new groups over them (``FoundCluster``); retried
    until the map is founded (by this or an earlier attempt)."""
    wanted = primary.config.founding_brokers
    meta.founding = True
    try:
        await _found_map(primary, meta, groups, wanted)
    finally:
        meta.founding = False


async def _found_map(primary: Broker, meta: MetaMap, groups: int, wanted: int) -> None:
    config = primary.config
    told = False
    while meta.map is None:
        voters = sorted(primary.driver.node.config.voters)
        addresses = {
            b: primary.driver.self_address
            if b == primary.broker_id
            else primary.driver.address_of(b)
            for b in voters
        }
        if len(voters) < wanted or None in addresses.values():
            if not told:
                log_event(
                    logging.INFO,
                    "groups.founding_waits",
                    brokers=len(voters),
                    founding_brokers=wanted,
                )
                told = True
            await trio.sleep(config.heartbeat_interval)
            continue
        brokers = [BrokerAddress(b, *addresses[b]) for b in voters]  # type: ignore[misc]
        factor = config.replication_factor
        if factor > len(brokers):
            log_event(
                logging.WARNING,
                "groups.replication_bounded",
                replication_factor=factor,
                brokers=len(brokers),
                reason=f"each group starts on the {len(brokers)} broker(s) known at founding; "
                f"the cluster keeps {factor}, which replica moves (the balancer) reach as "
                "brokers join (--founding-brokers waits for them instead)",
            )
        group_ids: list[str] = []
        while len(group_ids) < groups:
            group_id = new_cluster_id()
            if group_id not in group_ids and group_id != primary.cluster_id:
                group_ids.append(group_id)
        result = await meta.propose(found_cluster(brokers, group_ids, factor))
        if isinstance(result, MapChanged):
            log_event(logging.INFO, "groups.founded", groups=",".join(sorted(group_ids)))
            await meta.load()
            return
        if isinstance(result, CommandRejected):
            log_event(logging.WARNING, "groups.found_refused", reason=result.message)
            await meta.load()
            return
        log_event(logging.WARNING, "groups.found_retry", reason=result.message)
        await trio.sleep(config.failure_timeout)


# -- the metadata leader's and the group leaders' duties ------------------------------------------


async def register_brokers(primary: Broker, meta: MetaMap) -> None:
    """On the metadata leader: every member of the metadata group whose address is known is
    registered in the map (``RegisterBroker``), again when its address changed. Checked once
    per heartbeat interval; a refused or failed proposal waits a failure timeout."""
    config = primary.config
    while True:
        await trio.sleep(config.heartbeat_interval)
        cmap = meta.map
        if cmap is None or not meta.is_leader:
            continue
        for broker_id in sorted(primary.driver.node.config.members):
            address = (
                primary.driver.self_address
                if broker_id == primary.broker_id
                else primary.driver.addresses.get(broker_id)
            )
            record = cmap.broker(broker_id)
            if address is None or (record is not None and (record.host, record.port) == address):
                continue
            result = await meta.propose(RegisterBroker(broker_id, *address))
            log_event(
                logging.INFO if isinstance(result, MapChanged) else logging.WARNING,
                "groups.broker_registered",
                broker=broker_id,
                address=f"{address[0]}:{address[1]}",
                result=getattr(result, "message", "done"),
            )
            if not isinstance(result, MapChanged):
                await trio.sleep(config.failure_timeout)
            break  # (the map changed: look at the new one)


async def track_liveness(primary: Broker, meta: MetaMap) -> None:
    """On the metadata leader: a registered member whose failure detector verdict (active or
    inactive, ``member_statuses``) differs from the map's ``alive`` on two checks in a row,
    one failure timeout apart, is recorded (``SetBrokerAlive``): only a change of the verdict
    is proposed, and a blip shorter than a check changes nothing."""
    config = primary.config
    pending: dict[str, bool] = {}
    while True:
        await trio.sleep(config.failure_timeout)
        cmap = meta.map
        node = primary.driver.node
        if cmap is None or not node.is_leader:
            pending = {}
            continue
        statuses = node.member_statuses()
        seen: dict[str, bool] = {}
        for broker_id, record in sorted(cmap.brokers.items()):
            view = statuses.get(broker_id)
            if view is None:
                continue  # no longer a member of the metadata group: left as it is
            alive = view.status == "active"
            if alive == record.alive:
                continue
            if pending.get(broker_id) != alive:
                seen[broker_id] = alive
                continue
            result = await meta.propose(SetBrokerAlive(broker_id, alive))
            log_event(
                logging.INFO if isinstance(result, MapChanged) else logging.WARNING,
                "groups.broker_alive",
                broker=broker_id,
                alive=alive,
                result=getattr(result, "message", "done"),
            )
        pending = seen


async def report_replicas(replica: Broker, meta: MetaMap) -> None:
    """On a group's leader: after each committed change of its membership, report the
    committed voters and learners to the metadata group (``SetGroupReplicas``); the map
    refuses a report not newer than what it holds (``STALE_REPORT``), so reports of several
    leaders in turn may arrive in any order. And its queue count (``SetQueueCount``, counted
    by a :class:`QueueCounter`) whenever the map's differs. Checked once per heartbeat
    interval; one proposal at a time."""
    config = replica.config
    group_id = replica.cluster_id
    counter = meta.counter(replica)
    try:
        while True:
            await trio.sleep(config.heartbeat_interval)
            node = replica.driver.node
            cmap = meta.map
            record = None if cmap is None else cmap.group(group_id)
            if record is None or not node.is_leader:
                counter.forget()
                continue
            assert cmap is not None
            report: Any = None
            if node.config_committed and node.config.version > record.config_version:
                report = SetGroupReplicas(
                    group_id,
                    tuple(sorted(node.config.voters)),
                    tuple(sorted(node.config.learners)),
                    node.config.version,
                )
            else:
                await counter.refresh(config.failure_timeout)
                if (
                    counter.exact is not None
                    and counter.exact != cmap.queue_counts.get(group_id)
                    and counter.as_of > cmap.queue_counts_as_of.get(group_id, 0)
                ):
                    report = SetQueueCount(group_id, counter.exact, counter.as_of)
            if report is not None:
                await _report(meta, cmap, report, config.failure_timeout)
    finally:
        if meta.counters.get(group_id) is counter:
            del meta.counters[group_id]


async def _report(meta: MetaMap, cmap: ClusterMap, report: Any, failure_timeout: float) -> None:
    result = await meta.propose(report)
    if isinstance(report, SetGroupReplicas):
        fields: dict[str, Any] = {
            "event": "groups.replicas_reported",
            "voters": ",".join(report.voters),
            "learners": ",".join(report.learners),
            "config_version": report.config_version,
        }
    else:
        fields = {
            "event": "groups.queue_count_reported",
            "queue_count": report.queue_count,
            "as_of": report.as_of,
        }
    event = fields.pop("event")
    stale = isinstance(result, CommandRejected) and result.code == "STALE_REPORT"
    log_event(
        logging.INFO if isinstance(result, MapChanged) or stale else logging.WARNING,
        event,
        group=report.group_id,
        **fields,
        result=getattr(result, "message", "done"),
    )
    if not isinstance(result, MapChanged):
        await trio.sleep(failure_timeout)
    else:
        with trio.move_on_after(failure_timeout):
            while meta.map is cmap:  # (until this broker loaded the new map)
                await meta.wait_changed()


# -- leaders of the groups this broker does not host ----------------------------------------------


class LeaderBoard:
    """Leaders of the groups this broker does not host, as brokers hosting them said.

    Every ``failure_timeout`` it asks brokers (CLUSTER_QUERY) that together host every such
    group, those hosting most of them first, and keeps each answer's leaders of the groups
    the answering broker hosts (which it knows from their cores); a broker that does not
    answer is replaced by others hosting its groups, each broker asked at most once a round.
    An entry older than :data:`LEADER_TTL_REFRESHES` intervals is forgotten. So
    CLUSTER_QUERY's ``groups`` and NOT_LEADER name the leader of every group on every broker.
    """

    def __init__(self, primary: Broker) -> None:
        self.primary = primary
        self._seen: dict[str, tuple[str | None, str, float]] = {}
        """Group -> (its leader, the broker that said so, when)."""

    def _fresh(self) -> dict[str, tuple[str | None, str, float]]:
        ttl = self.primary.config.failure_timeout * LEADER_TTL_REFRESHES
        now = trio.current_time()
        return {g: seen for g, seen in self._seen.items() if now - seen[2] <= ttl}

    def leaders(self) -> dict[str, str | None]:
        return {g: leader for g, (leader, _, _) in self._fresh().items()}

    async def run(self, meta: MetaMap, hosted: Callable[[], set[str]]) -> None:
        config = self.primary.config
        while True:
            await trio.sleep(config.failure_timeout)
            cmap = meta.map
            if cmap is not None:
                await self.refresh(meta, cmap, set(cmap.groups) - hosted())

    async def refresh(self, meta: MetaMap, cmap: ClusterMap, missing: set[str]) -> None:
        asked: set[str] = {self.primary.broker_id}
        while missing:
            chosen = cover(cmap, missing, asked)
            if not chosen:
                return
            for broker_id in chosen:
                asked.add(broker_id)
                address = meta.address(broker_id)
                answer = None if address is None else await self._ask(address)
                if not isinstance(answer, ClusterTopology) or not answer.groups:
                    continue
                now = trio.current_time()
                for view in answer.groups:
                    record = cmap.group(view.cluster_id)
                    if record is not None and broker_id in record.replicas:
                        self._seen[view.cluster_id] = (view.leader_id, broker_id, now)
                        missing.discard(view.cluster_id)

    async def _ask(self, address: tuple[str, int]) -> Any:
        deadline = self.primary.config.failure_timeout
        try:
            return await self.primary.ask(address, ClusterQuery(), ClusterTopology, deadline)
        except UNREACHABLE:
            return None


def cover(cmap: ClusterMap, groups: set[str], asked: set[str]) -> list[str]:
    """Brokers not in ``asked`` that together host as many of ``groups`` as they can: each
    next the one hosting most of those still uncovered (ties to the lowest id)."""
    left = set(groups)
    chosen: list[str] = []
    while left:
        counts = {
            b: sum(1 for g in left if b in cmap.groups[g].replicas)
            for b in sorted(cmap.brokers)
            if b not in asked and b not in chosen
        }
        best = min(counts, key=lambda b: (-counts[b], b), default=None)
        if best is None or counts[best] == 0:
            break
        chosen.append(best)
        left -= {g for g in left if best in cmap.groups[g].replicas}
    return chosen


__all__ = [
    "LeaderBoard",
    "MetaMap",
    "QueueCounter",
    "cover",
    "found_map",
    "founding_voter",
    "hosted_by_map",
    "propose_here",
    "register_brokers",
    "report_replicas",
    "track_liveness",
]
