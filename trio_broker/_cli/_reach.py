"""Reaching a cluster from the command line: every seed is asked at once, the first answer wins.

``connect()`` asks its seeds one after another, a few seconds each, which is right for a
long-lived client but lets one silent seed (a machine that is down without refusing
connections) use up a command's whole ``--timeout`` before the next seed is tried. The CLI
first asks every seed at once, within the command's deadline, then connects through the seeds
that answered: the first one, and those that answer within ``SETTLE`` seconds of it (seeds of
several clusters give a client of every cluster that answers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .._errors import BrokerError
from ..client import BrokerUnreachableError, connect
from ._seeds import Address

SETTLE = 0.5
"""Seconds the other seeds get to answer once one has."""


@attrs.define
class Reached:
    """What the seeds said before the first answer (or the deadline)."""

    seeds: list[Address]
    answers: dict[Address, Any] = attrs.Factory(dict)
    """Seeds that answered, with what ``ask`` returned (in the order they answered)."""
    unreachable: dict[Address, str] = attrs.Factory(dict)
    """Seeds that could not be reached, with the reason."""
    refusals: list[BrokerError] = attrs.Factory(list)
    """Answers that were errors (a wrong token or secret, say)."""

    @property
    def silent(self) -> list[Address]:
        """Seeds that neither answered nor failed: still waiting when the probe ended."""
        return [s for s in self.seeds if s not in self.answers and s not in self.unreachable]

    def connect_order(self) -> list[Address]:
        """Seeds for ``connect()``: those that answered, in the order they did. The others were
        tried; the client still finds those that are members from the answers."""
        return list(self.answers)


async def ask_every_seed(
    reached: Reached, ask: Callable[[Address], Awaitable[Any]], *, settle: float = 0.0
) -> None:
    """Run ``ask(seed)`` for every seed at once, recording the outcomes in ``reached``; return
    ``settle`` seconds after the first answer, or once every seed has answered or failed.
    The caller's cancel scope bounds the wait (seeds still waiting when it ends are
    :attr:`Reached.silent`); ``ask`` raises BrokerUnreachableError for a seed it cannot reach
    and BrokerError for an error answer."""
    async with trio.open_nursery() as nursery:

        async def one(seed: Address) -> None:
            try:
                value = await ask(seed)
            except BrokerUnreachableError as exc:
                reasons = "; ".join(reason for _, reason in exc.errors)
                reached.unreachable[seed] = reasons or str(exc)
            except BrokerError as exc:
                reached.refusals.append(exc)
            else:
                reached.answers[seed] = value
                settled = trio.current_time() + settle
                nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline, settled)

        for seed in reached.seeds:
            nursery.start_soon(one, seed)


def answers_cluster_query(**security: Any) -> Callable[[Address], Awaitable[None]]:
    """An ``ask`` that succeeds when the seed answers CLUSTER_QUERY (what connect() asks)."""

    async def ask(seed: Address) -> None:
        async with connect([seed], **security):
            pass

    return ask


def topology_of(**security: Any) -> Callable[[Address], Awaitable[Any]]:
    """An ``ask`` that returns the seed's own view of its cluster (a Topology)."""

    async def ask(seed: Address) -> Any:
        async with connect([seed], **security) as client:
            return await client.cluster_query(seed)

    return ask
