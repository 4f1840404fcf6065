"""Several real brokers in one trio program, on 127.0.0.1, for tests and experiments.

Each broker runs in its own task and cancel scope, so a test can stop and restart one while the
others go on. Stopping cancels that broker (its data directory is intact, as after a crash that
lost nothing unsynced: every acknowledgement was fsynced first); ``stop(name, graceful=True)``
instead leaves ``open_broker`` normally, as SIGTERM does for a node: a leader hands its
leadership over and in-flight requests are answered first.

Keyword arguments are :class:`BrokerConfig` fields for every broker, the security settings
included (``tls_cert``, ``tls_key``, ``tls_ca``, ``cluster_secret_file``, ``client_tokens_file``;
docs/security.md). ``plaintext_port=0`` gives each broker a plaintext listener on a free port,
kept across restarts like the main port.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from .._runtime import Broker, BrokerConfig, open_broker
from ._broker_tasks import BrokerTasks


class LocalCluster(BrokerTasks):
    def __init__(self, nursery: trio.Nursery, base_dir: Path, **overrides: Any) -> None:
        super().__init__()
        self._nursery = nursery
        self.base_dir = Path(base_dir)
        self.overrides = {"heartbeat_interval": 0.05, "failure_timeout": 0.5} | overrides
        self.ports: dict[str, int] = {}
        self.plaintext_ports: dict[str, int] = {}
        self.groups = 1
        """Replication groups the founder founds (``open_local_cluster(groups=)``)."""
        self.founding_brokers = 1
        """With several groups: the brokers the founder waits for before placing them."""

    def config(self, name: str, seeds: list[str], **overrides: Any) -> BrokerConfig:
        settings = self.overrides | overrides
        if settings.get("plaintext_port") == 0:
            settings["plaintext_port"] = self.plaintext_ports.get(name, 0)
        if not seeds and not (self.base_dir / name).exists():
            settings.setdefault("groups", self.groups)
            settings.setdefault("founding_brokers", self.founding_brokers)
        return BrokerConfig(
            data_dir=self.base_dir / name,
            port=self.ports.get(name, 0),
            seeds=seeds,
            **settings,
        )

    async def start(self, name: str, *, seeds: list[str] | None = None, **overrides: Any) -> Broker:
        """Start (or restart) broker ``name``. A new broker joins through the running ones."""
        if seeds is None:
            fresh = not (self.base_dir / name).exists()
            seeds = [f"127.0.0.1:{b.port}" for b in self.brokers.values()] if fresh else []
        config = self.config(name, seeds, **overrides)
        broker = await self._nursery.start(
            functools.partial(self._run_broker, name, open_broker(config))
        )
        self.ports[name] = broker.port
        if broker.plaintext_port is not None:
            self.plaintext_ports[name] = broker.plaintext_port
        return broker

    def leaders(self) -> list[Broker]:
        return [b for b in self.brokers.values() if b.is_leader]

    async def wait_for_leader(self, *, among: list[str] | None = None) -> Broker:
        """Wait until exactly one running broker leads and every running broker follows it."""
        while True:
            running = [b for n, b in self.brokers.items() if among is None or n in among]
            leaders = [b for b in running if b.is_leader]
            if len(leaders) == 1 and all(b.leader_id == leaders[0].broker_id for b in running):
                return leaders[0]
            await trio.sleep(0.01)

    async def wait_for_voters(self, count: int) -> Broker:
        """Wait until the leader's configuration has ``count`` voters and no learner, and is
        committed: a configuration takes effect when appended, and until it is committed the
        leader refuses the next membership change."""
        while True:
            leader = await self.wait_for_leader()
            config = leader.node.config
            if len(config.voters) == count and not config.learners and leader.node.config_committed:
                return leader
            await trio.sleep(0.01)

    def name_of(self, broker: Broker) -> str:
        return next(n for n, b in self.brokers.items() if b is broker)


@contextlib.asynccontextmanager
async def open_local_cluster(
    base_dir: Path, size: int = 3, *, groups: int = 1, **overrides: Any
) -> AsyncIterator[LocalCluster]:
    """Start ``size`` brokers named ``b1``..``bN``: b1 founds the cluster, the rest join.
    With ``size=0``, start none: the caller starts brokers by name (say, from restored data).
    With ``groups`` above 1, b1 founds that many replication groups (docs/replication.md,
    "Several leaders") once all ``size`` brokers have joined, placed by the cluster map with
    the replication factor (``replication_factor=``, default 3; 0: every broker hosts every
    group, the stage-1 list)."""
    async with trio.open_nursery() as nursery:
        cluster = LocalCluster(nursery, base_dir, **overrides)
        cluster.groups = groups
        cluster.founding_brokers = max(size, 1)
        for i in range(1, size + 1):
            await cluster.start(f"b{i}")
        if size:
            await cluster.wait_for_voters(size)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()
