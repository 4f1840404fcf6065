"""A receive's requests on a broker hosting several groups, in runs of one group each
(``GroupRouting.handle_many``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio

from trio_broker._errors import BrokerError
from trio_broker._protocol import Append, ClusterQuery, CreateQueue, Read
from trio_broker._protocol._codec import as_request
from trio_broker._runtime import _group_routing
from trio_broker._runtime._group_routing import GroupRouting


def test_plain_appends_of_the_runs_queue_join_it_without_routing_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pipelined appends of one queue, then another group's queue, then the first again: three
    runs in request order, each to its group's replica; the group is worked out for a run's
    first request and for the request that ends it, not for each append of the run's queue
    (before: once for every request)."""
    decided: list[tuple[str, list[Any]]] = []

    def replica(name: str) -> Any:
        async def handle_many(requests: list[Any], session: Any, answered: Any) -> None:
            decided.append((name, list(requests)))

        return SimpleNamespace(runs=SimpleNamespace(handle_many=handle_many))

    host = SimpleNamespace(
        primary=replica("primary"),
        groups={"G-AAAAA": replica("A"), "G-BBBBB": replica("B")},
        meta=SimpleNamespace(map=None),
    )
    named = []
    real = _group_routing.named_group

    def counted(request: Any) -> Any:
        named.append(request)
        return real(request)

    monkeypatch.setattr(_group_routing, "named_group", counted)
    a, b = "Q-AAAAA00001", "Q-BBBBB00001"
    requests: list[Any] = [
        *((a, b"x", None) for _ in range(5)),
        *((b, b"y", None) for _ in range(3)),
        (a, b"z", None),
    ]
    trio.run(GroupRouting(host).handle_many, requests, None, lambda answers: None)  # type: ignore[arg-type]
    assert [(name, len(run)) for name, run in decided] == [("A", 5), ("B", 3), ("A", 1)]
    assert [r for _, run in decided for r in run] == requests
    assert len(named) == 5, named  # (each run's first, and the two requests that ended one)


def _runs_as_before(routing: GroupRouting, requests: list[Any]) -> list[tuple[Any, list[Any]]]:
    """The runs as they were cut before a run's plain appends joined it by their queue id:
    every request's group worked out (``None`` for a request answered alone)."""
    runs: list[tuple[Any, list[Any]]] = []
    start = 0
    while start < len(requests):
        first = requests[start]
        target = routing.target(first)
        if isinstance(first, ClusterQuery | CreateQueue) or isinstance(target, BrokerError):
            runs.append((None, [as_request(first)]))
            start += 1
            continue
        end = start + 1
        while (
            end < len(requests)
            and not isinstance(requests[end], ClusterQuery | CreateQueue)
            and routing.target(requests[end]) is target
        ):
            end += 1
        runs.append((target, requests[start:end]))
        start = end
    return runs


def test_runs_are_cut_as_when_every_request_was_routed() -> None:
    """Random receives mixing plain appends and other requests of hosted groups' queues, of a
    group of the map hosted elsewhere (NOT_LEADER), of queue names no group claims (the
    primary), CREATE_QUEUE and CLUSTER_QUERY: the same runs, to the same replicas, in request
    order, as when each request's group was worked out."""
    import random

    from trio_broker._errors import ErrorCode

    decided: list[tuple[Any, list[Any]]] = []

    def replica(name: str) -> Any:
        async def handle_many(requests: list[Any], session: Any, answered: Any) -> None:
            decided.append((me, list(requests)))

        me = SimpleNamespace(name=name, runs=SimpleNamespace(handle_many=handle_many))
        return me

    host = SimpleNamespace(
        primary=replica("primary"),
        groups={"G-AAAAA": replica("A"), "G-BBBBB": replica("B")},
        meta=SimpleNamespace(
            map=SimpleNamespace(groups={"G-AAAAA", "G-BBBBB", "G-CCCCC"}),
            not_leader=lambda group: BrokerError(ErrorCode.NOT_LEADER, group),
        ),
    )
    routing = GroupRouting(host)  # type: ignore[arg-type]

    async def alone(request: Any, session: Any = None) -> Any:
        decided.append((None, [request]))
        return None

    routing.handle = alone  # type: ignore[method-assign]
    queues = ["Q-AAAAA00001", "Q-AAAAA00002", "Q-BBBBB00001", "Q-CCCCC00001", "plain", ""]
    rng = random.Random(7)
    for _ in range(300):
        requests: list[Any] = []
        for _ in range(rng.randrange(1, 12)):
            r = rng.random()
            queue = rng.choice(queues)
            if r < 0.6:
                requests.append((queue, b"x", None))
            elif r < 0.75:
                requests.append(Read(queue, "c"))
            elif r < 0.85:
                requests.append(Append(queue, "y"))
            elif r < 0.93:
                requests.append(CreateQueue())
            else:
                requests.append(ClusterQuery())
        decided.clear()
        trio.run(routing.handle_many, requests, None, lambda answers: None)
        before = _runs_as_before(routing, requests)
        assert [(t, repr(run)) for t, run in decided] == [(t, repr(run)) for t, run in before]
