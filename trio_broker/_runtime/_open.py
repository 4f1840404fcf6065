"""A broker's lifetime: :func:`open_broker` and the nurseries it nests, a hosted group's
replica built beside the broker (:func:`_group_replica`), and the links to the peers every
group shares (:func:`open_peer_mux`).

Lifetimes shape the nurseries: the storage worker outlives the services (the consensus driver
and its peer links, the group host, the metrics server), which outlive the connections.
Shutdown stops accepting, stops reading new requests, gives in-flight requests
``shutdown_grace`` seconds to be answered, then cancels what is left.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import trio

from .._storage import Identity, StorageWorker, Store, open_sqlite_storage
from .._storage._failed import refuse_if_failed
from . import _membership as membership
from ._boot import note_boot
from ._broker import Broker
from ._config import BrokerConfig
from ._groups import GroupHost, GroupStorage, open_group_storage
from ._log import log_event
from ._membership import JoinFailed
from ._metrics import serve_metrics
from ._network import TCP, Network, TlsNetwork
from ._peer_mux import PeerMux
from ._security import load_security


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
    directory, :class:`IdentityMismatch` if the directory belongs to another identity,
    :class:`JoinFailed` if the seeds' cluster refuses this broker, and
    :class:`~trio_broker._storage.StorageFailed` if a write failed on this data folder before
    (or fails while it runs) in a way that may have lost acknowledged writes.

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
    # A write failed here before, in a way that may have lost acknowledged writes: not a
    # folder to trust (docs/reliability.md, "A failed fsync stops the broker").
    refuse_if_failed(config.data_dir)
    async with storage(config.data_dir) as (worker, store):
        # Before the core is built from the store's state (docs/reliability.md, "A reboot votes
        # only once it knows").
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
        await broker.load_views()
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
                    # Cancelled (a crash, as tests make one), the broker does not step down
                    # (docs/replication.md, "Step-down on shutdown"): its driver is cancelled
                    # with it, so a transfer could only wait its bound out and fail.
                    cancelled = trio.current_effective_deadline() == -math.inf
                    with trio.CancelScope(shield=True):
                        log_event(logging.INFO, "broker.stopping", broker_id=broker.broker_id)
                        if not cancelled:
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
    await broker.load_views()
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
        reconnected=functools.partial(_reconnected, broker),
    )


def _reconnected(primary: Broker, group_id: str, peer: str) -> None:
    """A link to ``peer`` carrying ``group_id``'s messages connected: that group's core here
    is told (``RaftNode.peer_reconnected``: a leader sends its member view again)."""
    host = primary.host
    broker = primary if host is None else host.groups.get(group_id)
    if broker is not None:
        broker.driver.node.peer_reconnected(peer)


async def serve_broker(
    config: BrokerConfig, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a broker until cancelled; ``task_status.started`` gets the :class:`Broker`."""
    async with open_broker(config) as broker:
        task_status.started(broker)
        await trio.sleep(math.inf)
