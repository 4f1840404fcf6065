"""The broker-to-broker and operator requests: which room decides each, once its cluster is
checked.

The client's queue requests are decided by the broker's table (:mod:`._broker`, with the
checks of :mod:`._operations`); these are the others of the contract's admin list
(:mod:`trio_broker._protocol._admin_messages`): membership, leadership transfer and snapshots
(:mod:`._membership`), the balancer's requests (:mod:`._balancing`), metadata proposals
(:mod:`._metamap`), snapshot chunks (:mod:`._snapshot_fetch`) and FETCH_VALUES
(:mod:`._repair`, through the driver). Their connection checked the cluster secret already;
the cluster id is checked here again, since :meth:`~._broker.Broker.handle` may be called
directly.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._errors import BrokerError
from .._protocol import (
    AddMember,
    DataSyncRequest,
    FetchValues,
    JoinCluster,
    ProposeMetadata,
    RemoveMember,
    TakeSnapshot,
    TransferLeadership,
)
from .._protocol import _messages as m
from . import _balancing as balancing
from . import _membership as membership
from ._answer import Answer
from ._metamap import propose_here
from ._operations import wrong_cluster
from ._snapshot_fetch import serve_snapshot_chunk

if TYPE_CHECKING:
    from ._broker import Broker
    from ._connections import Session

Handler = Callable[[Any, "Session | None"], Awaitable[Answer]]
"""What the broker's table holds for each request type: the request and its session in, the
answer out."""

Decide = Callable[["Broker", Any], Awaitable[Any]]
"""An admin request decided on a broker: a response, or the error that refuses it."""


async def _balancer_request(broker: Broker, request: m.Rebalance | m.DrainBroker) -> Any:
    return await balancing.on_metadata_leader(
        broker.balancing,
        request,
        functools.partial(membership.forward_to_leader, broker),
        listed=balancing.groups_listed(broker),
    )


async def _data_sync(broker: Broker, request: DataSyncRequest) -> Any:
    return await serve_snapshot_chunk(broker.driver.read_snapshot_chunk, request)


async def _fetch_values(broker: Broker, request: FetchValues) -> Any:
    return await broker.driver.fetch_values(request)


ADMIN_REQUESTS: dict[type, Decide] = {
    JoinCluster: membership.join,
    RemoveMember: membership.remove,
    TransferLeadership: membership.transfer,
    TakeSnapshot: membership.take_snapshot,
    AddMember: membership.add_member,
    m.Rebalance: _balancer_request,
    m.DrainBroker: _balancer_request,
    m.SetClusterSettings: balancing.set_cluster_settings,
    ProposeMetadata: propose_here,
    DataSyncRequest: _data_sync,
    FetchValues: _fetch_values,
}
"""One line per admin request type: the function that decides it on a broker."""


def privileged(broker: Broker, decide: Decide) -> Handler:
    """A broker-to-broker or operator request: decided once its cluster is checked (also
    checked per connection, but :meth:`~._broker.Broker.handle` may be called directly)."""

    async def handler(request: Any, _session: Session | None) -> Answer:
        refusal: BrokerError | None = wrong_cluster(broker.cluster_id, request.cluster_id)
        return Answer(now=refusal or await decide(broker, request))

    return handler


def admin_handlers(broker: Broker) -> dict[type, Handler]:
    """The broker's table entries for the admin requests (:data:`ADMIN_REQUESTS`)."""
    return {cls: privileged(broker, decide) for cls, decide in ADMIN_REQUESTS.items()}
