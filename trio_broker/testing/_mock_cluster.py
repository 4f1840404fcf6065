"""Real brokers over a :class:`~trio_broker.testing.MemoryNetwork`, for the mock clock.

The same runtime as :func:`~trio_broker.testing.open_local_cluster` (listener, heartbeats,
failure detector, elector, replicators: every task of ``open_broker``), but the network is in
memory and the disks are :class:`~trio_broker.testing.MemoryStore` objects, so a scenario runs
under pytest-trio's ``autojump_clock`` in virtual seconds::

    async def test_leader_isolation(autojump_clock):
        async with open_mock_cluster(3) as cluster:
            old = cluster.name_of(await cluster.wait_for_leader())
            cluster.isolate(old)
            new = await cluster.wait_for_leader()
            cluster.heal()
            await cluster.stabilize()

Scenario verbs follow etcd's interaction tests: ``isolate``, ``partition``, ``block``, ``heal``,
``crash``, ``restart``, ``stabilize``, ``wait_for_leader``. Timings are the production defaults
(0.2 s heartbeats, 1.5 s failure timeout) unless overridden, and log compaction is off by
default, because :class:`~trio_broker.testing.MemoryStore` cannot ship snapshots.
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import trio

from .._protocol import FrameDecoder, encode_frame, loads_object
from .._runtime import Broker, BrokerConfig, open_broker
from .._runtime._metamap import hosted_by_map
from ._broker_tasks import BrokerTasks
from ._memory_network import LOCALHOST, MemoryNetwork, MemoryStream
from ._memory_store import MemoryStore, open_memory_storage

POLL = 0.01
"""Virtual seconds between two looks at the cluster while waiting for a condition."""
CLIENT = "client"
"""The host requests come from, unless a scenario places its client elsewhere."""
NO_COMPACTION = 10**9

_GOLDEN = (5**0.5 - 1) / 2
_SHORT_NAME = re.compile(r"[A-Za-z0-9]{1,5}")


def broker_id_for(name: str) -> str | None:
    """A readable, stable broker id for a short name: ``b1`` -> ``B-000B1`` (ids order like
    the names for ``b1``..``b99``, and the core prefers lower ids in elections)."""
    if not _SHORT_NAME.fullmatch(name):
        return None
    return "B-" + name.upper().rjust(5, "0")


class MockCluster(BrokerTasks):
    """Brokers by name on one :class:`MemoryNetwork`, each in its own cancel scope.

    ``brokers`` holds the running ones; ``stores`` every broker's store, running or not (a
    crashed broker's store is what it restarts from, and what a test inspects).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        base_dir: Path,
        network: MemoryNetwork | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self._nursery = nursery
        self.base_dir = Path(base_dir)
        """Holds the brokers' (empty) data directories: the MemoryStores hold the data. The
        runtime only looks there for a ``snapshots`` directory, and would write a snapshot
        there, which MemoryStore refuses with a clear error."""
        self.network = network or MemoryNetwork()
        self.overrides = {"compact_threshold": NO_COMPACTION} | overrides
        self.stores: dict[str, MemoryStore] = {}
        self.group_stores: dict[tuple[str, str], MemoryStore] = {}
        """(broker name, group id) -> the store of that broker's replica of an extra group
        (docs/replication.md, "Several leaders"), kept across crashes like ``stores``."""
        self.retired_stores: dict[tuple[str, str], MemoryStore] = {}
        """Stores of replicas the cluster map no longer places on their broker (retired)."""
        self.groups = 1
        """How many replication groups the founder founds (``open_mock_cluster(groups=)``)."""
        self.founding_brokers = 1
        """With several groups: how many brokers the founder waits for before placing them."""
        self.ports: dict[str, int] = {}
        self._starts = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def config(self, name: str, seeds: list[str], **overrides: Any) -> BrokerConfig:
        settings: dict[str, Any] = {
            "data_dir": self.base_dir / name,
            "host": LOCALHOST,
            "port": self.ports.get(name, 0),
            "seeds": seeds,
        }
        if not seeds:
            settings["groups"] = self.groups
            settings["founding_brokers"] = self.founding_brokers
        broker_id = broker_id_for(name)
        if broker_id is not None:
            settings["broker_id"] = broker_id
        return BrokerConfig(**(settings | self.overrides | overrides))

    async def start(self, name: str, *, seeds: list[str] | None = None, **overrides: Any) -> Broker:
        """Start (or restart) broker ``name``; a new broker joins through the running ones.

        Returns once ``open_broker`` has: a founder leads, a newcomer's join was accepted (it
        is a learner until caught up), a restarted member has rebuilt its state.
        """
        if name in self.brokers:
            raise RuntimeError(f"broker {name} is already running")
        if seeds is None:
            seeds = [f"{LOCALHOST}:{self.ports[n]}" for n in self.brokers if n != name]
        config = self.config(name, seeds, **overrides)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.stores.setdefault(name, MemoryStore(name))
        await self._sleep_to_next_phase(config.tick_seconds)
        broker = await self._nursery.start(functools.partial(self._run, name, config, store))
        self.ports[name] = broker.port
        return broker

    async def _sleep_to_next_phase(self, tick: float) -> None:
        """Start each broker at its own phase of the core's tick, as real processes do.

        Under the autojump clock everything else takes no time, so brokers started one after
        the other would tick at the very same virtual instants; with instant delivery, two
        followers then time out in the same tick (a split vote) far more often than they ever
        do in production. Phases follow the golden-ratio sequence: every start gets a phase
        far from the previous ones.
        """
        self._starts += 1
        phase = (self._starts * _GOLDEN) % 1.0 * tick
        now = trio.current_time()
        await trio.sleep_until(now + (phase - now) % tick)

    async def restart(self, name: str, **overrides: Any) -> Broker:
        """Start a stopped or crashed broker again, on its old port, from its store."""
        return await self.start(name, **overrides)

    async def _run(
        self,
        name: str,
        config: BrokerConfig,
        store: MemoryStore,
        *,
        task_status: trio.TaskStatus[Broker],
    ) -> None:
        self.network.revive(name)
        opening = open_broker(
            config,
            network=self.network.host(name),
            storage=open_memory_storage(store),
            group_storage=self._group_storage_of(name),
        )
        await self._run_broker(name, opening, task_status=task_status)

    def _group_storage(
        self, name: str, group_id: str, path: Path
    ) -> contextlib.AbstractAsyncContextManager[tuple[Any, Any]]:
        store = self.group_stores.setdefault((name, group_id), MemoryStore(f"{name}/{group_id}"))
        return open_memory_storage(store)(path)

    def _group_storage_of(self, name: str) -> Any:
        """Broker ``name``'s ``group_storage``, whose ``retire`` sets a removed replica's store
        aside (in :attr:`retired_stores`), so that one placed there again starts empty."""
        storage: Any = functools.partial(self._group_storage, name)

        async def retire(group_id: str, _path: Path) -> None:
            store = self.group_stores.pop((name, group_id), None)
            if store is not None:
                self.retired_stores[(name, group_id)] = store

        storage.retire = retire
        return storage

    def replicas(self, name: str) -> dict[str, Broker]:
        """Broker ``name``'s running group replicas by group id (its cluster group's too)."""
        broker = self.brokers[name]
        return dict(broker.host.groups) if broker.host is not None else {broker.cluster_id: broker}

    def group_leaders(self) -> dict[str, str | None]:
        """Group id -> the name of the running broker that leads it (None: none does)."""
        leaders: dict[str, str | None] = {}
        for name in sorted(self.brokers):
            for group_id, replica in self.replicas(name).items():
                leaders.setdefault(group_id, None)
                if replica.driver.node.is_leader:
                    leaders[group_id] = name
        return leaders

    async def crash(self, name: str) -> None:
        """Kill broker ``name`` abruptly, as a process crash.

        In one step (no other task runs in between): every task of the broker is cancelled,
        its streams break and its port refuses connections (the kernel cleaning up after a
        dead process), and its store refuses further calls from it. The store keeps exactly
        what ``save()`` persisted; everything else the broker knew is lost.
        """
        self._scopes[name].cancel()
        self.network.kill(name)
        self.stores[name].crash()
        for (holder, _), store in self.group_stores.items():
            if holder == name:  # (its group replicas' stores: the same dead process)
                store.crash()
        await self._stopped[name].wait()

    # -- faults ------------------------------------------------------------------------------

    def isolate(self, name: str) -> None:
        """Cut ``name`` off from every other host (brokers and clients), both ways."""
        self.network.isolate(name)

    def partition(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """No traffic between the groups; hosts in neither (the client) reach both."""
        self.network.partition(group_a, group_b)

    def block(self, src: str, dst: str) -> None:
        """One-way: what ``src`` sends to ``dst`` is held back; ``dst`` -> ``src`` flows."""
        self.network.block(src, dst)

    def heal(self) -> None:
        """Undo every isolate, partition and block."""
        self.network.heal()

    # -- observing ---------------------------------------------------------------------------

    def name_of(self, broker: Broker | str) -> str:
        """The name of a broker, given the broker or its broker id."""
        broker_id = broker if isinstance(broker, str) else broker.broker_id
        for name, store in self.stores.items():
            identity = store.identity()
            if identity is not None and identity.broker_id == broker_id:
                return name
        raise LookupError(f"no broker with id {broker_id}")

    def leaders(self) -> list[Broker]:
        """Every running broker that believes it leads (a deposed one may, for a while)."""
        return [b for b in self.brokers.values() if b.is_leader]

    def majority(self) -> list[str]:
        """The running brokers that can all talk to each other both ways and form a majority
        of the voters (as the running brokers know them); empty if there is none."""
        names = sorted(self.brokers)
        voters: set[str] = set()
        for broker in self.brokers.values():
            voters |= broker.node.config.voters
        components: list[list[str]] = []
        for name in names:
            for component in components:
                if all(self.network.reachable(name, other) for other in component):
                    component.append(name)
                    break
            else:
                components.append([name])
        for component in sorted(components, key=len, reverse=True):
            ids = {self.brokers[n].broker_id for n in component}
            if len(ids & voters) > len(voters) // 2:
                return component
        return []

    def _group(self, among: Iterable[str] | None) -> list[str]:
        if among is None:
            return self.majority()
        return [n for n in among if n in self.brokers]

    def leader(self, *, among: Iterable[str] | None = None) -> Broker:
        """The one leader of ``among`` (default: the reachable majority), followed by all of
        them; raises LookupError if there is not exactly one right now."""
        group = self._group(among)
        running = [self.brokers[n] for n in group]
        leaders = [b for b in running if b.is_leader]
        if len(leaders) != 1 or not all(b.leader_id == leaders[0].broker_id for b in running):
            roles = {n: (self.brokers[n].node.role.value, self.brokers[n].node.term) for n in group}
            raise LookupError(f"no single leader followed by {group}: {roles}")
        return leaders[0]

    async def wait_for_leader(self, *, among: Iterable[str] | None = None) -> Broker:
        """Wait until exactly one broker of ``among`` (default: the reachable majority) leads
        and the others follow it."""
        among = None if among is None else list(among)
        while True:
            with contextlib.suppress(LookupError):
                if among is None and not self.majority():
                    raise LookupError("no majority")
                return self.leader(among=among)
            await trio.sleep(POLL)

    async def wait_for_voters(self, count: int) -> Broker:
        """Wait until the leader has ``count`` voters and no learners."""
        while True:
            leader = await self.wait_for_leader()
            if len(leader.node.config.voters) == count and not leader.node.config.learners:
                return leader
            await trio.sleep(POLL)

    async def stabilize(self, *, among: Iterable[str] | None = None) -> Broker:
        """Wait until the cluster is quiet: one leader of ``among`` (default: the reachable
        majority) has committed its whole log, and every broker of the group holds the same
        log and has applied all of it. Returns the leader."""
        among = None if among is None else list(among)
        while True:
            leader = await self.wait_for_leader(among=among)
            log = leader.node.log
            group = [self.brokers[n] for n in self._group(among) if n in self.brokers]
            if leader.node.commit == log.last_index and all(
                b.node.log.last_index == log.last_index
                and b.node.log.last_term == log.last_term
                and b.applied_index == log.last_index
                for b in group
            ):
                return leader
            await trio.sleep(POLL)

    def data_replicas(self, name: str) -> dict[str, Broker]:
        """Broker ``name``'s running replicas of the data groups: with a cluster map, every
        replica but the metadata group's; with the stage-1 list, every one."""
        broker = self.brokers[name]
        replicas = self.replicas(name)
        if broker.host is not None and broker.host.meta.map is not None:
            replicas.pop(broker.cluster_id, None)
        return replicas

    def data_leaders(self) -> dict[str, str | None]:
        """As :meth:`group_leaders`, for the data groups only (the metadata group apart)."""
        leaders = self.group_leaders()
        for broker in self.brokers.values():
            if broker.host is not None and broker.host.meta.map is not None:
                leaders.pop(broker.cluster_id, None)
        return leaders

    async def wait_for_groups(self, groups: int, voters: int) -> None:
        """Until every running broker hosts its group replicas, each with ``voters`` voters
        and a leader: with the stage-1 list every broker hosts all ``groups`` of them (the
        cluster group among them); with a cluster map, the ``groups`` of the map each have a
        leader and every broker hosts exactly those the map places on it."""

        def ready() -> bool:
            for name, broker in self.brokers.items():
                cmap = None if broker.host is None else broker.host.meta.map
                replicas = self.replicas(name)
                if cmap is not None:
                    replicas = self.data_replicas(name)
                    placed = hosted_by_map(cmap, broker.broker_id)
                    if len(cmap.groups) != groups or set(replicas) != placed:
                        return False
                elif len(replicas) != groups:
                    return False
                for replica in replicas.values():
                    node = replica.driver.node
                    if len(node.config.voters) != voters or node.leader_id is None:
                        return False
            return True

        await self.wait_until(ready)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, looking every :data:`POLL` virtual seconds.

        Polls rather than waits for ``driver.wait_changed()``: not every change of a broker's
        state comes with a Ready (a check-quorum step-down does not), so polling is what sees
        them all.
        """
        while True:
            if predicate():
                return
            await trio.sleep(POLL)

    async def wait_applied(self, name: str, index: int) -> None:
        """Wait until broker ``name`` has applied ``index``."""
        while self.brokers[name].applied_index < index:
            await self.brokers[name].driver.wait_changed()

    def messages(self, name: str, queue_id: str) -> list[Any]:
        """The values broker ``name`` durably holds in ``queue_id`` (running or not)."""
        return [orjson.loads(data) for data in self.stores[name].messages(queue_id)]

    # -- clients -----------------------------------------------------------------------------

    async def connect(self, name: str, *, src: str = CLIENT) -> MemoryStream:
        """A raw connection from host ``src`` to broker ``name``; raises OSError if it cannot."""
        return await self.network.host(src).connect(LOCALHOST, self.ports[name])

    async def call(
        self, name: str, request: dict[str, Any], *, src: str = CLIENT
    ) -> dict[str, Any]:
        """Send one raw wire request from host ``src`` to broker ``name``; its answer.

        Raises OSError when no connection can be made, and ConnectionError or
        trio.BrokenResourceError when the connection ends before the answer. Waits as long as
        the broker does (use ``trio.move_on_after`` for "no answer").
        """
        stream = await self.connect(name, src=src)
        async with stream:
            await stream.send_all(encode_frame(orjson.dumps(request)))
            decoder = FrameDecoder()
            while (payload := decoder.next_frame()) is None:
                data = await stream.receive_some()
                if not data:
                    raise ConnectionError(f"{name} closed the connection before answering")
                decoder.feed(data)
        return loads_object(payload)


@contextlib.asynccontextmanager
async def open_mock_cluster(
    size: int = 3,
    *,
    network: MemoryNetwork | None = None,
    base_dir: Path | None = None,
    groups: int = 1,
    **overrides: Any,
) -> AsyncIterator[MockCluster]:
    """Start ``size`` brokers named ``b1``..``bN`` on a memory network: b1 founds the cluster,
    the rest join it; returns once all are voters. ``overrides`` are BrokerConfig fields.
    With ``groups`` above 1, b1 founds that many replication groups once all ``size`` brokers
    have joined (``founding_brokers``), placed by the cluster map with the replication factor
    (``replication_factor=``, default 3; 0: every broker hosts every group, the stage-1 list),
    and this returns once every group has its voters and a leader.
    ``base_dir`` defaults to a temporary directory, which stays empty.

    Meant for pytest-trio's ``autojump_clock``; it runs under a real clock too.
    """
    with contextlib.ExitStack() as stack:
        if base_dir is None:
            base_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mock-")))
        async with _serve_mock_cluster(size, base_dir, network, groups, overrides) as cluster:
            yield cluster


@contextlib.asynccontextmanager
async def _serve_mock_cluster(
    size: int,
    base_dir: Path,
    network: MemoryNetwork | None,
    groups: int,
    overrides: dict[str, Any],
) -> AsyncIterator[MockCluster]:
    async with trio.open_nursery() as nursery:
        cluster = MockCluster(nursery, base_dir, network, **overrides)
        cluster.groups = groups
        cluster.founding_brokers = size
        for i in range(1, size + 1):
            await cluster.start(f"b{i}")
        await cluster.wait_for_voters(size)
        if groups > 1:
            factor = overrides.get("replication_factor", 3)
            await cluster.wait_for_groups(groups, min(factor, size) if factor else size)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


__all__ = ["MockCluster", "broker_id_for", "open_mock_cluster"]
